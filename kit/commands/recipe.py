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
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from kit.arch import METHOD_NAMES, MODELS, quantization, resolve_arch
from kit.engine.data import TASKS
from kit.machine.device import bnb_error, profile
from kit.errors import UserError
from kit.files import RUNS
from kit.scratch.lora import check_hparams
from kit.machine.memory import estimate
from kit.machine.models import resolve
from kit.engine.train import TrainConfig, check_value, knob

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"   # kit/recipes: ships with the package


@dataclass
class RunKnobs:
    # ---- what to train
    model: str = knob("smollm2-135m", f"a preset ({', '.join(MODELS)}; smollm2-135m is bundled "
                      "offline), a hub id or a local folder. Start with the smallest model that can "
                      "plausibly do the task.")
    method: str = knob("lora", "full: every weight trains (16 bytes per parameter with AdamW); lora: "
                       "small adapters on a frozen base; qlora: the same adapters on a 4-bit base. "
                       "LoRA first; QLoRA when the 16-bit base does not fit; full when adapters "
                       "plateau and memory allows.", METHOD_NAMES)
    quantization: str = knob("auto", "how the frozen base is stored: auto (nf4 for qlora, none "
                             "otherwise), none, nf4 (the QLoRA paper's 4-bit type) or fp4. Only the "
                             "base is quantized; the adapters always train in 16/32 bit.",
                             ("auto", "none", "nf4", "fp4"))
    double_quant: bool = knob(True, "4-bit only: quantize the per-block scales too, 4.5 -> about 4.13 "
                              "bits per weight at no measurable cost. Leave it on.")
    device: str = knob("auto", "auto uses a CUDA GPU when there is one; cuda refuses to start without "
                       "one (GPU recipes set it, so a 7B run does not crawl on a CPU); cpu forces the "
                       "CPU.", ("auto", "cpu", "cuda"), may_change=True)
    # ---- data
    task: str = knob("dates", "a task the kit generates: dates (normalise dates to ISO 8601, learned "
                     "in minutes) or extract (fields of a sentence as JSON, harder). Ignored when "
                     "data_file or hub_dataset is set.", TASKS)
    data_file: str | None = knob(None, "your own examples: a .jsonl, .json, .csv or .tsv file of "
                                 "conversations (a messages column), Alpaca records (instruction, "
                                 "input, output) or prompt/response columns (kit.engine.formats), split "
                                 "80/10/10 into train/validation/test. A few hundred good examples "
                                 "beat thousands of noisy ones.")
    hub_dataset: str | None = knob(None, "a Hugging Face dataset id (needs the network); columns as "
                                   "for data_file.")
    prompt_column: str = knob("prompt", "the column holding the prompt (data_file, hub_dataset).")
    response_column: str = knob("response", "the column holding the answer to learn; the loss is on "
                                "these tokens only.")
    n_train: int = knob(400, "training examples generated for task (data_file and hub_dataset are "
                        "used whole). Exact-answer tasks need hundreds, not thousands.", low=1)
    n_val: int = knob(50, "validation examples generated for task: the loss on them, every "
                      "eval_steps, shows overfitting.", low=0)
    skip_bad_rows: bool = knob(False, "a row of data_file or hub_dataset that cannot be used (an empty "
                               "prompt or response, a malformed conversation) stops the run with its "
                               "file and line; true skips such rows, prints how many and records it "
                               "(skipped_rows in summary.json). Fix the rows if you can.")
    # ---- run folder and evaluation
    output_dir: str | None = knob(None, "where the adapter or model, checkpoints, history and summary "
                                  "go; null = runs/finetune/<recipe name>.", may_change=True)
    resume: bool = knob(True, "carry on from the newest checkpoint in output_dir (the same command "
                        "again resumes); false deletes them and starts over.", may_change=True)
    eval_examples: int = knob(50, "test examples scored (exact match) before and after training; 0 = "
                              "skip. Generation is the slow part of evaluation.", low=0, may_change=True)


# Every knob: its field (default, type, help, choices, lower bound). Training knobs are TrainConfig's.
KNOBS: dict[str, dataclasses.Field] = {f.name: f for dc in (RunKnobs, TrainConfig)
                                       for f in dataclasses.fields(dc)}
# the knobs a resumed run may set otherwise than its checkpoint (kit.engine.checkpoint checks the rest)
MAY_CHANGE = frozenset(name for name, spec in KNOBS.items() if spec.metadata["may_change"])
SECTIONS = {  # how a recipe file is laid out
    "What to train": ["model", "method", "quantization", "double_quant", "device"],
    "Data": ["task", "data_file", "hub_dataset", "prompt_column", "response_column", "n_train",
             "n_val", "skip_bad_rows", "max_length"],
    "Training": ["max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                 "learning_rate", "warmup_steps", "lr_scheduler_type", "weight_decay", "max_grad_norm",
                 "gradient_checkpointing", "optim", "train_sampling_strategy", "eval_steps",
                 "early_stopping_patience", "early_stopping_threshold", "seed", "disable_tqdm"],
    "LoRA adapters (method lora or qlora)": ["lora_r", "lora_alpha", "lora_dropout",
                                             "lora_target_modules", "use_rslora", "use_dora",
                                             "loraplus_lr_ratio"],
    "Run folder, checkpoints, evaluation": ["output_dir", "save_steps", "save_total_limit", "resume",
                                            "stop_after", "eval_examples"],
}


class RecipeError(UserError):
    """A recipe or an override that cannot run; the message says how to fix it."""


# ---------------------------------------------------------------------------- values
def _closest(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def _typed(spec: dataclasses.Field, value):
    """A knob's value from YAML or the command line (text), typed by the knob's field."""
    kind, text = spec.type, isinstance(value, str)
    if text and (value.strip().lower() in ("null", "~") or (value.strip().lower() == "none" and "None" in kind)):
        return None
    if not text:
        return value
    value = value.strip()
    if kind == "bool":
        lowered = value.lower()
        return lowered in ("true", "yes", "on", "1") if lowered in (
            "true", "yes", "on", "1", "false", "no", "off", "0") else value
    if kind.startswith("int"):
        return int(value) if value.lstrip("+-").isdigit() else value
    if kind.startswith("float"):
        try:
            return float(value)  # YAML reads 2e-4 as a string
        except ValueError:
            return value
    if spec.name == "lora_target_modules":
        items = [t.strip() for t in value.strip("[] ").split(",") if t.strip()]
        return "all-linear" if items == ["all-linear"] else items
    return value


def coerce(name: str, value, where: str = "recipe"):
    """Check `value` for knob `name` (from YAML or a --knob value string); return it typed."""
    if name not in KNOBS:
        raise RecipeError(f"Unknown knob '{name}' ({where}).{_closest(name, KNOBS)} "
                          f"Valid knobs: {', '.join(KNOBS)}.")
    spec = KNOBS[name]
    out = _typed(spec, value)
    if out is None and "None" not in spec.type:
        raise RecipeError(f"{name} needs a value ({where}); it cannot be null. Default: {spec.default!r}.")
    if spec.type == "str" and not (isinstance(out, str) and out):
        raise RecipeError(f"{name} must be a text value; got {value!r} ({where}).")
    if name == "lora_target_modules" and not (out == "all-linear" or (
            isinstance(out, list) and out and all(isinstance(t, str) for t in out))):
        raise RecipeError(f"{name} must be all-linear or a list of layer names such as [q_proj, v_proj]; "
                          f"got {value!r} ({where}).")
    try:
        check_value(name, out, spec)
    except ValueError as e:
        hint = _closest(out, spec.metadata["choices"]) if spec.metadata.get("choices") else ""
        raise RecipeError(f"{str(e).rstrip('.')} ({where}).{hint}") from None
    return out


# ---------------------------------------------------------------------------- the command line
class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise RecipeError(f"{message}. Example: --max_steps 100 --lora_r 16.")


def argument_parser() -> argparse.ArgumentParser:
    """`--config` and one `--knob` per knob (dashes or underscores), help from the knob's
    field; values stay text here and are typed and checked by `coerce`."""
    parser = _Parser(prog="python -m kit finetune", allow_abbrev=False,
                     description="Train from a recipe (kit/recipes/*.yaml or your own file); any knob "
                                 "can be overridden on the command line. An error in the recipe or "
                                 "the data is one line; --debug shows its traceback.")
    parser.add_argument("--config", help="a recipe file, or a name from kit/recipes/ (cpu-lora, ...)")
    for heading, names in SECTIONS.items():
        group = parser.add_argument_group(heading)
        for name in names:
            spec = KNOBS[name]
            flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
            group.add_argument(*flags, dest=name, default=argparse.SUPPRESS, metavar="VALUE",
                               help=f"{spec.metadata['help']} (default: {spec.default})".replace("%", "%%"))
    return parser


def parse_args(args: list[str]) -> tuple[str | None, dict[str, str]]:
    """['--config', 'cpu-lora', '--max_steps', '10', '--lora-r=4'] -> ('cpu-lora',
    {'max_steps': '10', 'lora_r': '4'}): the recipe and the knobs overridden (as text)."""
    known, rest = argument_parser().parse_known_args(args)
    for arg in rest:
        if arg.startswith("--"):
            name = arg[2:].partition("=")[0].replace("-", "_")
            raise RecipeError(f"Unknown knob '{name}' (--{name}).{_closest(name, KNOBS)} "
                              "python -m kit finetune --help lists every knob.")
        raise RecipeError(f"Expected --knob value, got {arg!r}. Example: --max_steps 100 --lora_r 16.")
    overrides = vars(known)
    return overrides.pop("config", None), overrides


# ---------------------------------------------------------------------------- files
def find(config: str) -> Path:
    """A recipe path, or a name from kit/recipes/ ('cpu-lora' -> kit/recipes/cpu-lora.yaml)."""
    path = Path(config).expanduser()
    if path.is_file():
        return path
    named = RECIPES_DIR / f"{config}.yaml"
    if named.is_file():
        return named
    known = names()
    raise RecipeError(f"--config {config!r} is neither a file nor a recipe name. Recipes: "
                      f"{', '.join(known)}.{_closest(config, known)}")


def names() -> list[str]:
    """The recipes that ship with the kit."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _read_recipe(path: Path) -> tuple[dict, dict]:
    """A recipe file's knobs, and the line each one is on ({knob: line}, 1-based)."""
    text = path.read_text()
    try:
        node, raw = yaml.compose(text), yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError(f"{where} is not valid YAML ({getattr(e, 'problem', None) or e}). Each "
                          "line of a recipe is knob: value, e.g. lora_r: 16.") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path} must be a mapping of knob: value lines, e.g. lora_r: 16.")
    keys = [key for key, _ in node.value if isinstance(key, yaml.ScalarNode)] if raw else []
    return raw, {key.value: key.start_mark.line + 1 for key in keys}


def load(config: str | None, overrides: dict | None = None) -> dict:
    """Defaults <- recipe file <- overrides, each value checked. Adds '_name' (the recipe's
    file name without .yaml, or 'custom') and '_source'."""
    recipe = {name: spec.default for name, spec in KNOBS.items()}
    name, source = "custom", "defaults"
    if config:
        path = find(config)
        name, source = path.stem, str(path)
        raw, lines = _read_recipe(path)
        for key, value in raw.items():
            line = f":{lines[str(key)]}" if str(key) in lines else ""
            recipe[key] = coerce(str(key), value, f"in {path.name}{line}")
    for key, value in (overrides or {}).items():
        recipe[key] = coerce(key, value, f"--{key}")
    recipe["_name"], recipe["_source"] = name, source
    return recipe


def train_config(recipe: dict, **extra) -> TrainConfig:
    """The recipe's training knobs as a TrainConfig (the same names: nothing is renamed)."""
    return TrainConfig(**{f.name: recipe[f.name] for f in dataclasses.fields(TrainConfig)} | extra)


def check(recipe: dict) -> dict:
    """Cross-knob checks and the machine check, before any model is loaded. Returns the
    resolved recipe (quantization decided)."""
    r = dict(recipe)
    if r["quantization"] == "auto":
        r["quantization"] = quantization(r["method"]) or "none"
    if quantization(r["method"]) and r["quantization"] not in ("nf4", "fp4"):
        raise RecipeError(f"method: qlora trains adapters on a 4-bit base; quantization must be nf4 "
                          f"or fp4 (or auto), got {r['quantization']!r}. Or use method: lora.")
    if not quantization(r["method"]) and r["quantization"] != "none":
        raise RecipeError(f"quantization: {r['quantization']} is for method: qlora (adapters on a "
                          f"4-bit base); with method: {r['method']} set quantization: none.")
    gpu = torch.cuda.is_available()
    if r["device"] == "cuda" and not gpu:
        raise RecipeError(f"Recipe '{r['_name']}' sets device: cuda, but this machine has no CUDA GPU "
                          "(python -m kit device shows what it has). Run it on a GPU machine (a "
                          "Colab T4 is free), or pick a CPU recipe: cpu-lora, cpu-qlora, cpu-full.")
    if r["device"] == "cpu" and gpu:
        raise RecipeError("device: cpu on a machine with a CUDA GPU is not supported by the kit's "
                          "device policy; hide the GPU with CUDA_VISIBLE_DEVICES= to train on the CPU.")
    if r["optim"] in ("adamw_8bit", "paged_adamw_8bit") and not gpu:
        raise RecipeError(f"optim: {r['optim']} needs a CUDA GPU; use optim: adamw_torch here.")
    if r["quantization"] in ("nf4", "fp4"):
        problem = bnb_error(profile(), 4)
        if problem:
            raise RecipeError(f"quantization: {r['quantization']} cannot run here: {problem}")
    if r["data_file"] and r["hub_dataset"]:
        raise RecipeError("Set data_file or hub_dataset, not both.")
    if r["data_file"] and not Path(r["data_file"]).expanduser().is_file():
        raise RecipeError(f"data_file {r['data_file']!r} is not a file. Give the path of a .jsonl, "
                          ".json, .csv or .tsv file with prompt and response columns.")
    try:
        check_hparams(r["lora_r"], r["lora_alpha"], r["lora_dropout"])
    except ValueError as e:
        raise RecipeError(str(e)) from None
    try:
        resolve(r["model"])  # a hub id offline, or an unknown name, fails here, before loading
    except ValueError as e:
        raise RecipeError(f"model: {e}") from None
    return r


def output_dir(recipe: dict) -> Path:
    return Path(recipe["output_dir"] or RUNS / "finetune" / recipe["_name"])


def estimate_for(recipe: dict):
    """kit.machine.memory's estimate of one training step for a recipe (None if its model is not an
    architecture the estimator knows)."""
    r = {name: spec.default for name, spec in KNOBS.items()} | recipe
    try:
        arch = resolve_arch(r["model"])
    except ValueError:
        return None
    return estimate(arch, r["method"], bits=4 if quantization(r["method"]) else None, r=r["lora_r"],
                    targets=r["lora_target_modules"], batch_size=r["per_device_train_batch_size"],
                    seq_len=r["max_length"], gradient_checkpointing=r["gradient_checkpointing"],
                    optimizer=r["optim"], lora_dropout=r["lora_dropout"])


# ---------------------------------------------------------------------------- writing a recipe
def _yaml_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(value) + "]"
    if isinstance(value, float):
        return f"{value:g}" if "e" not in f"{value:g}" else f"{value:.1e}"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def _wrap(text: str, indent: str = "# ") -> list[str]:
    return textwrap.wrap(text, width=92, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False, break_long_words=False)


def render(values: dict, title: str) -> str:
    """A recipe file with every knob, its value, and its meaning and rule of thumb as comments
    (what a run folder's recipe.yaml holds). Knobs not in `values` get their defaults."""
    unknown = set(values) - set(KNOBS)
    if unknown:
        raise RecipeError(f"render got unknown knobs {sorted(unknown)}.")
    lines = [wrapped for line in title.strip().splitlines() for wrapped in (_wrap(line) or ["#"])]
    lines += ["#", "# Run: python -m kit finetune --config <this file> [--knob value ...]"]
    for heading, names_ in SECTIONS.items():
        lines += ["", f"# ---- {heading}"]
        for name in names_:
            lines += _wrap(KNOBS[name].metadata["help"])
            lines.append(f"{name}: {_yaml_value(values.get(name, KNOBS[name].default))}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- accelerate launch configs
def accelerate_config(name: str) -> Path:
    """The `accelerate launch --config_file` for `name` (cpu-2proc, multi-gpu, fsdp-qlora):
    kit/recipes/accelerate/<name>.yaml, which ships with the package."""
    path = RECIPES_DIR / "accelerate" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (RECIPES_DIR / "accelerate").glob("*.yaml"))
        raise RecipeError(f"name must be one of {', '.join(known)}; got {name!r}.{_closest(name, known)}")
    return path
