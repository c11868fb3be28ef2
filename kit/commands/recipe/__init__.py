"""Recipes: a fine-tuning run described in one YAML file, every knob explained.

    python -m kit finetune --config cpu-lora --max_steps 100 --lora_r 16

A recipe is a flat set of knobs: the training settings are the fields of
`kit.engine.train.TrainConfig` (named as in transformers' TrainingArguments and TRL), the rest
(model, data, run folder) the fields of `RunKnobs` below. Each knob's meaning and rule of
thumb is written once, in its field; `python -m kit finetune --help` and the recipe.yaml of a
run folder print them. The files in kit/recipes/ hold only what differs from the defaults.

Values are read by one parser (argparse, with one converter per knob) whether they come from
a YAML file or the command line, and checked before any model is loaded: an unknown knob
(with the closest valid name suggested), a value of the wrong kind or outside its choices, a
GPU recipe on a machine without a GPU, a data file that is not there.

    knobs  every knob, once     parse  values typed and checked     files  recipe files
"""
from kit.commands.recipe.data import read_data  # noqa: F401
from kit.commands.recipe.files import (RECIPES_DIR, accelerate_config, check, estimate_for,  # noqa: F401
                                       find, load, names, output_dir, render, train_config)
from kit.commands.recipe.knobs import KNOBS, MAY_CHANGE, SECTIONS, RunKnobs  # noqa: F401
from kit.commands.recipe.parse import RecipeError, argument_parser, coerce, parse_args  # noqa: F401
