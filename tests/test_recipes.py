"""Recipes: every knob documented once and checked; bad input refused before any model loads."""
import dataclasses
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch
import yaml
from transformers import TrainingArguments

from kit.arch import GPUS
from kit.commands import finetune as finetune_cli, recipe as recipes
from kit.commands.recipe import KNOBS, RecipeError
from kit.engine.train import TrainConfig

GPU = torch.cuda.is_available()
ROOT = Path(__file__).resolve().parent.parent
# TrainConfig's names that transformers' TrainingArguments does not have, and where they come from
NOT_TRAINING_ARGUMENTS = {"max_length": "TRL SFTConfig", "lora_r": "TRL ModelConfig",
                          "lora_alpha": "TRL ModelConfig", "lora_dropout": "TRL ModelConfig",
                          "lora_target_modules": "TRL ModelConfig", "use_rslora": "TRL ModelConfig",
                          "use_dora": "TRL ModelConfig", "loraplus_lr_ratio": "peft's create_loraplus_optimizer",
                          "stop_after": "the kit's own (end a session, resume later)",
                          "early_stopping_patience": "transformers' EarlyStoppingCallback",
                          "early_stopping_threshold": "transformers' EarlyStoppingCallback",
                          "answer_logits_only": "the kit's own (transformers' logits_to_keep, at the answers)"}


def test_every_knob_is_documented_once_and_its_default_valid():
    sectioned = [n for names in recipes.SECTIONS.values() for n in names]
    assert sorted(sectioned) == sorted(KNOBS) and len(sectioned) == len(set(sectioned))
    for name, spec in KNOBS.items():
        assert len(spec.metadata["help"]) > 20, name
        assert recipes.coerce(name, spec.default) == spec.default


def test_training_knobs_carry_the_names_transformers_and_trl_use():
    """A recipe knob is the TrainConfig field it sets (no renaming layer), and that name is
    transformers' TrainingArguments' or, for the LoRA settings, TRL's."""
    hf = {f.name for f in dataclasses.fields(TrainingArguments)}
    ours = {f.name for f in dataclasses.fields(TrainConfig)}
    assert ours - hf == set(NOT_TRAINING_ARGUMENTS)
    assert ours <= set(KNOBS)
    config = recipes.train_config(recipes.load("cpu-lora", {"learning_rate": "1e-4", "lora_r": "4"}))
    assert (config.learning_rate, config.lora_r) == (1e-4, 4)


@pytest.mark.parametrize("name", recipes.names())
def test_each_recipe_loads_and_cpu_ones_pass_the_checks_here(name):
    recipe = recipes.load(name)
    assert recipe["_name"] == name
    values = yaml.safe_load((recipes.RECIPES_DIR / f"{name}.yaml").read_text())
    assert {k: recipe[k] for k in values} == {k: recipes.coerce(k, v) for k, v in values.items()}
    if values.get("device") == "cuda" and not GPU:
        with pytest.raises(RecipeError, match="no CUDA GPU.*cpu-lora"):
            recipes.check(recipe)
    elif not GPU:
        checked = recipes.check(recipe)
        assert checked["quantization"] == ("nf4" if checked["method"] == "qlora" else "none")


def test_the_recipe_files_ship_with_the_package():
    """pyproject's package-data covers every file under kit/recipes (pip install in Colab)."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["kit"]
    files = [p.relative_to(ROOT / "kit").as_posix() for p in recipes.RECIPES_DIR.rglob("*") if p.is_file()]
    assert files and all(any(fnmatch(f, pat) for pat in patterns) for f in files)
    assert {"cpu-lora", "cpu-qlora", "cpu-full", "t4-qlora-7b"} <= set(recipes.names())


def test_gpu_recipes_estimates_fit_their_gpus():
    assert recipes.estimate_for(recipes.load("t4-qlora-7b")).total < GPUS["T4"]
    for name in ("a100-lora", "a100-qlora"):
        assert recipes.estimate_for(recipes.load(name)).total < GPUS["A100-40GB"]
    assert recipes.estimate_for({"model": "my/own-model"}) is None


@pytest.mark.parametrize("args, match", [
    (["--lerning_rate", "1e-4"], r"Unknown knob 'lerning_rate'.*Did you mean 'learning_rate'"),
    (["--lora-rank", "4"], r"Unknown knob 'lora_rank'.*Did you mean 'lora_r'"),
    (["--max_steps", "ten"], r"max_steps must be a whole number; got 'ten'.*\(--max_steps\)"),
    (["--max_steps", "0"], r"max_steps must be >= 1"),
    (["--per_device_train_batch_size", "1.5"], r"per_device_train_batch_size must be a whole number"),
    (["--learning_rate", "fast"], r"learning_rate must be a number"),
    (["--gradient_checkpointing", "maybe"], r"gradient_checkpointing must be true or false"),
    (["--method", "qlor"], r"method must be one of \['full', 'lora', 'qlora'\].*Did you mean 'qlora'"),
    (["--max_steps"], r"--max_steps.*expected one argument"),
    (["steps", "3"], r"Expected --knob value"),
    (["--model", "null"], r"model needs a value"),
])
def test_bad_overrides_are_refused_with_the_fix(args, match):
    with pytest.raises(RecipeError, match=match):
        recipes.load("cpu-lora", recipes.parse_args(args)[1])


def test_overrides_win_over_the_file_which_wins_over_defaults(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("max_steps: 30\nlearning_rate: 1e-4\nlora_target_modules: [q_proj, v_proj]\n")
    config, overrides = recipes.parse_args(["--config", str(path), "--max_steps=7", "--lora-r", "4",
                                            "--warmup_steps", "null"])
    r = recipes.load(config, overrides)
    assert (r["max_steps"], r["lora_r"], r["learning_rate"], r["warmup_steps"]) == (7, 4, 1e-4, None)
    assert r["lora_target_modules"] == ["q_proj", "v_proj"]
    assert r["per_device_train_batch_size"] == KNOBS["per_device_train_batch_size"].default
    assert recipes.load(None, {"lora_target_modules": "q_proj,v_proj"})["lora_target_modules"] == ["q_proj", "v_proj"]
    rendered = yaml.safe_load(recipes.render({k: r[k] for k in KNOBS}, "test"))
    assert {k: recipes.coerce(k, v) for k, v in rendered.items()} == {k: r[k] for k in KNOBS}


def test_a_bad_recipe_file_names_the_file_and_the_knob(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("lerning_rate: 1e-4\n")
    with pytest.raises(RecipeError, match=r"in typo.yaml.*Did you mean 'learning_rate'"):
        recipes.load(str(path))
    with pytest.raises(RecipeError, match=r"neither a file nor a recipe name.*Did you mean 'cpu-lora'"):
        recipes.load("cpu-lorra")


@pytest.mark.parametrize("args, match", [
    (["--method", "qlora", "--quantization", "none"], "quantization must be nf4 or fp4"),
    (["--method", "lora", "--quantization", "nf4"], "is for method: qlora"),
    (["--data_file", "/no/such/file.jsonl"], "is not a file"),
    (["--model", "someone/some-model"], "not reachable"),
    (["--lora_dropout", "1.5"], "dropout must be a number in [0, 1)"),
    (["--lora_alpha", "0"], "alpha (lora_alpha) must be a number > 0"),
] + ([] if GPU else [(["--device", "cuda"], "no CUDA GPU"),
                     (["--optim", "paged_adamw_8bit"], "needs a CUDA GPU")]))
def test_cross_checks_fail_before_any_model_is_loaded(args, match, monkeypatch, capsys):
    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the recipe was checked")

    monkeypatch.setattr(finetune_cli, "load_model", no_loading)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert finetune_cli.main(["--config", "cpu-lora", *args]) == 2
    assert match in capsys.readouterr().err


def test_accelerate_launch_files(tmp_path):
    kinds = {"cpu-2proc": "MULTI_GPU", "multi-gpu": "MULTI_GPU", "fsdp-qlora": "FSDP"}
    for name, kind in kinds.items():
        settings = yaml.safe_load(recipes.accelerate_config(name).read_text())
        assert settings["distributed_type"] == kind and settings["num_processes"] == 2, name
    fsdp = yaml.safe_load(recipes.accelerate_config("fsdp-qlora").read_text())["fsdp_config"]
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD" and fsdp["fsdp_use_orig_params"] is True
    with pytest.raises(RecipeError, match="cpu-2proc.*Did you mean 'cpu-2proc'"):
        recipes.accelerate_config("cpu-2prc")


@pytest.mark.parametrize("fsdp, recipe, expected", [("true", "cpu-qlora", torch.float32),
                                                    ("", "cpu-qlora", None), ("true", "cpu-lora", None)])
def test_an_fsdp_launch_packs_4bit_codes_in_the_compute_dtype(fsdp, recipe, expected, monkeypatch, tmp_path):
    """Under `accelerate launch` with an FSDP config (ACCELERATE_USE_FSDP=true), QLoRA loads
    with quant_storage = the compute dtype; otherwise the default uint8 packing."""
    seen = {}

    class Loaded(Exception):
        pass

    def capture(*a, **k):
        seen.update(k)
        raise Loaded

    monkeypatch.setattr(finetune_cli, "load_model", capture)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", fsdp)
    with pytest.raises(Loaded):
        finetune_cli.main(["--config", recipe, "--output_dir", str(tmp_path)])
    assert seen["quant_storage"] == expected
