"""Recipe files: found by name or path, read, checked across knobs and against this machine before
anything loads, written back with every knob's meaning as a comment.
"""
from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import torch
import yaml

from kit.arch import quantization, resolve_arch
from kit.commands.recipe.knobs import KNOBS, SECTIONS
from kit.commands.recipe.parse import RecipeError, closest, coerce
from kit.engine.train import TrainConfig
from kit.files import RUNS
from kit.machine.device import bnb_error, profile
from kit.machine.memory import estimate
from kit.machine.models import resolve
from kit.scratch.lora import check_hparams

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"   # kit/recipes: ships with the package


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
                      f"{', '.join(known)}.{closest(config, known)}")


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
        raise RecipeError(f"name must be one of {', '.join(known)}; got {name!r}.{closest(name, known)}")
    return path
