"""Recipes: a fine-tuning run described in one YAML file, every knob explained.

    python -m kit finetune --config recipes/cpu-lora.yaml --steps 100 --lora_r 16

A recipe is a flat list of knobs (KNOBS below: name, default, kind, meaning, rule of
thumb). The files in recipes/ are rendered from this table by `render`, so each knob's
comment is written once, here, and a test keeps the files and the table in step.

Everything is checked before any model is loaded: an unknown knob (with the closest
valid name suggested), a value of the wrong kind or outside its choices, a GPU recipe
on a machine without a GPU, a data file that is not there.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


@dataclass(frozen=True)
class Knob:
    default: object
    kind: str           # "int", "float", "bool", "str", "targets"; a trailing "?" allows null
    help: str           # what it means, and a rule of thumb
    choices: tuple = ()
    low: float | None = None  # smallest allowed value for numbers


SECTIONS = {
    "model": ("What to train", ["model", "method", "quantization", "double_quant", "device"]),
    "data": ("Data", ["task", "data_file", "hub_dataset", "prompt_column", "response_column",
                      "n_train", "n_val", "max_length"]),
    "training": ("Training", ["steps", "batch_size", "grad_accum", "learning_rate", "warmup_steps",
                              "schedule", "weight_decay", "max_grad_norm",
                              "gradient_checkpointing", "optimizer", "eval_every", "seed"]),
    "lora": ("LoRA adapters (method lora or qlora)", ["lora_r", "lora_alpha", "lora_dropout",
                                                       "lora_targets", "use_rslora"]),
    "run": ("Run folder, checkpoints, evaluation", ["output_dir", "save_every", "keep_checkpoints",
                                                    "resume", "stop_after", "eval_examples"]),
}

KNOBS: dict[str, Knob] = {
    # ---- what to train
    "model": Knob("smollm2-135m", "str",
                  "a preset (smollm2-135m bundled offline, smollm2-360m, smollm2-1.7b, qwen2.5-7b, "
                  "tiny-llama), a hub id or a local folder. Start with the smallest model that can "
                  "plausibly do the task."),
    "method": Knob("lora", "str",
                   "full: every weight trains (16 bytes per parameter with AdamW); lora: small "
                   "adapters on a frozen base; qlora: the same adapters on a 4-bit base. LoRA "
                   "first; QLoRA when the 16-bit base does not fit; full when adapters plateau "
                   "and memory allows.", ("full", "lora", "qlora")),
    "quantization": Knob("auto", "str",
                         "how the frozen base is stored: auto (nf4 for qlora, none otherwise), "
                         "none, nf4 (the QLoRA paper's 4-bit type) or fp4. Only the base is "
                         "quantized; the adapters always train in 16/32 bit.",
                         ("auto", "none", "nf4", "fp4")),
    "double_quant": Knob(True, "bool",
                         "4-bit only: quantize the per-block scales too, 4.5 -> about 4.13 bits "
                         "per weight at no measurable cost. Leave it on."),
    "device": Knob("auto", "str",
                   "auto uses a CUDA GPU when there is one; cuda refuses to start without one "
                   "(GPU recipes set it, so a 7B run does not crawl on a CPU); cpu forces the CPU.",
                   ("auto", "cpu", "cuda")),
    # ---- data
    "task": Knob("dates", "str",
                 "a task the kit generates: dates (normalise dates to ISO 8601, learned in "
                 "minutes) or extract (fields of a sentence as JSON, harder). Ignored when "
                 "data_file or hub_dataset is set.", ("dates", "extract")),
    "data_file": Knob(None, "str?",
                      "your own examples: a .jsonl or .csv file with a prompt and a response "
                      "column (split 80/10/10 into train/validation/test). A few hundred good "
                      "examples beat thousands of noisy ones."),
    "hub_dataset": Knob(None, "str?",
                        "a Hugging Face dataset id (needs the network); columns as for data_file."),
    "prompt_column": Knob("prompt", "str", "the column holding the prompt (data_file, hub_dataset)."),
    "response_column": Knob("response", "str",
                            "the column holding the answer to learn; the loss is on these tokens only."),
    "n_train": Knob(400, "int", "training examples generated for task (data_file and hub_dataset "
                    "are used whole). Exact-answer tasks need hundreds, not thousands.", low=1),
    "n_val": Knob(50, "int", "validation examples generated for task: the loss on them, every "
                  "eval_every steps, shows overfitting.", low=0),
    "max_length": Knob(256, "int", "tokens per example, prompt and answer; longer ones are "
                       "truncated. Set it just above your longest example: memory grows with it.",
                       low=8),
    # ---- training
    "steps": Knob(60, "int", "optimizer steps. Examples seen = steps x batch_size x grad_accum x "
                  "processes; one to three passes over the data is typical.", low=1),
    "batch_size": Knob(8, "int", "examples per forward pass per process. Memory grows with it; "
                       "halve it (and double grad_accum) when out of memory.", low=1),
    "grad_accum": Knob(1, "int", "forward passes summed into one optimizer step: the effective "
                       "batch is batch_size x grad_accum, at the memory of batch_size.", low=1),
    "learning_rate": Knob(None, "float?", "peak learning rate; null = the kit's measured default "
                          "per method (full 5e-5, lora and qlora 2e-3). Adapters take steps about "
                          "40x larger than full fine-tuning.", low=0),
    "warmup_steps": Knob(None, "int?", "steps of linear warm-up from 0 to the peak; null = 10% of "
                         "steps. Warm-up keeps the first updates, made with a poor gradient "
                         "estimate, small.", low=0),
    "schedule": Knob("cosine", "str", "after warm-up: cosine or linear decay to 0, or constant. "
                     "Cosine is the common default.", ("cosine", "linear", "constant")),
    "weight_decay": Knob(0.0, "float", "AdamW's decoupled weight decay. 0 for short LoRA runs; "
                         "0.01-0.1 for long full fine-tuning.", low=0),
    "max_grad_norm": Knob(1.0, "float", "clip the gradient norm to this (0 = no clipping). 1.0 "
                          "guards against the odd huge step.", low=0),
    "gradient_checkpointing": Knob(False, "bool", "recompute activations in the backward pass: "
                                   "activation memory falls to a fraction for about 30% more "
                                   "time. Turn it on when activations, not weights, are what "
                                   "does not fit (long sequences, big batches)."),
    "optimizer": Knob("adamw", "str", "adamw (two fp32 moments, 8 bytes per trained parameter) "
                      "or paged_adamw_8bit (bitsandbytes, CUDA only: 2 bytes, paged to CPU "
                      "memory on spikes).", ("adamw", "paged_adamw_8bit")),
    "eval_every": Knob(20, "int", "validation loss every N steps (and at the start and end); 0 = "
                       "never. Each costs a pass over the validation examples.", low=0),
    "seed": Knob(0, "int", "seeds the data order, the adapters' initialisation and dropout: same "
                 "seed, same run (exactly so on a CPU)."),
    # ---- LoRA
    "lora_r": Knob(8, "int", "adapter rank r: trainable parameters grow linearly with it. 8-16 "
                   "suits most tasks; raise it when the loss plateaus above full fine-tuning's.",
                   low=1),
    "lora_alpha": Knob(16, "float", "the update is scaled by alpha / r; alpha = 2 x r is a "
                       "common choice. Changing r at a fixed ratio keeps the learning rate valid.",
                       low=0),
    "lora_dropout": Knob(0.05, "float", "dropout on the adapter's input: a little regularisation "
                         "for small data; 0 turns it off.", low=0),
    "lora_targets": Knob("all-linear", "targets", "which layers get adapters: all-linear, or a "
                         "list such as [q_proj, v_proj] (the original LoRA paper's). All linear "
                         "layers usually learn more per parameter."),
    "use_rslora": Knob(False, "bool", "scale by alpha / sqrt(r) instead of alpha / r: steadier "
                       "when you try large ranks."),
    # ---- run
    "output_dir": Knob(None, "str?", "where the adapter or model, checkpoints, history and "
                       "summary go; null = runs/finetune/<recipe name>."),
    "save_every": Knob(20, "int", "checkpoint every N steps (and at the end and on Ctrl-C); "
                       "0 = only then. On Colab, where sessions end, keep it small.", low=0),
    "keep_checkpoints": Knob(2, "int", "newest checkpoints kept on disk; a full fine-tuning "
                             "checkpoint of a 7B model is about 80 GB.", low=1),
    "resume": Knob(True, "bool", "carry on from the newest checkpoint in output_dir (the same "
                   "command again resumes); false deletes them and starts over."),
    "stop_after": Knob(0, "int", "end this run after N more steps, checkpointed, and resume "
                       "later with the same command (for sessions with a time limit); 0 = run "
                       "to steps.", low=0),
    "eval_examples": Knob(50, "int", "test examples scored (exact match) before and after "
                          "training; 0 = skip. Generation is the slow part of evaluation.", low=0),
}

# Knobs that may change between a run and its resumption (the rest must match).
RESUMABLE_CHANGES = {"steps", "eval_every", "save_every", "keep_checkpoints", "resume",
                     "stop_after", "eval_examples", "output_dir", "device"}


class RecipeError(ValueError):
    """A recipe or an override that cannot run; the message says how to fix it."""


# ---------------------------------------------------------------------------- values
def _closest(name: str) -> str:
    close = difflib.get_close_matches(name, KNOBS, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def coerce(name: str, value, where: str = "recipe"):
    """Check `value` for knob `name` (from YAML or a --key value string); return it typed."""
    if name not in KNOBS:
        raise RecipeError(f"Unknown knob '{name}' ({where}).{_closest(name)} "
                          f"Valid knobs: {', '.join(KNOBS)}.")
    knob = KNOBS[name]
    kind, nullable = knob.kind.rstrip("?"), knob.kind.endswith("?")
    text = isinstance(value, str)
    if value is None or (text and value.strip().lower() in ("null", "~")) or (
            text and value.strip().lower() == "none" and nullable):
        if nullable:
            return None
        raise RecipeError(f"{name} needs a value ({where}); it cannot be null. Default: {knob.default!r}.")

    def wrong(expected: str):
        return RecipeError(f"{name} must be {expected}; got {value!r} ({where}). "
                           f"Default: {knob.default!r}. {_sentence(knob.help)}")

    if kind == "bool":
        if isinstance(value, bool):
            out = value
        elif text and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            out = value.strip().lower() in ("true", "yes", "on", "1")
        else:
            raise wrong("true or false")
    elif kind == "int":
        if isinstance(value, bool):
            raise wrong("a whole number")
        if isinstance(value, int):
            out = value
        elif text and value.strip().lstrip("+-").isdigit():
            out = int(value)
        else:
            raise wrong("a whole number")
    elif kind == "float":
        if isinstance(value, bool):
            raise wrong("a number")
        try:
            out = float(value)  # YAML reads 2e-4 as a string: accept it here
        except (TypeError, ValueError):
            raise wrong("a number (e.g. 2e-4)") from None
    elif kind == "targets":
        if text:
            items = [t.strip() for t in value.strip("[] ").split(",") if t.strip()]
            out = "all-linear" if items == ["all-linear"] else items
        elif isinstance(value, list) and value and all(isinstance(t, str) for t in value):
            out = list(value)
        else:
            raise wrong("all-linear or a list of layer names such as [q_proj, v_proj]")
        if not out:
            raise wrong("all-linear or a list of layer names such as [q_proj, v_proj]")
    else:  # str
        if not text or not value.strip():
            raise wrong("a text value")
        out = value.strip()
    if knob.choices and out not in knob.choices:
        raise RecipeError(f"{name} must be one of {', '.join(map(str, knob.choices))}; got {out!r} "
                          f"({where}).{_closest_choice(out, knob.choices)}")
    if knob.low is not None and out < knob.low:
        raise RecipeError(f"{name} must be >= {knob.low:g}; got {out!r} ({where}). {_sentence(knob.help)}")
    return out


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _closest_choice(value, choices) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


# ---------------------------------------------------------------------------- files and overrides
def _cache() -> Path:
    from kit.models import cache_dir
    return cache_dir() / "recipes"


def find(config: str) -> Path:
    """A recipe path, or a name from recipes/ ('cpu-lora' -> recipes/cpu-lora.yaml). Where the
    kit was installed without its repository (pip in Colab), a named recipe is rendered from
    RECIPES into the kit's cache."""
    path = Path(config).expanduser()
    if path.is_file():
        return path
    named = RECIPES_DIR / f"{config}.yaml"
    if named.is_file():
        return named
    if config in RECIPES:
        cached = _cache() / f"{config}.yaml"
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(render(RECIPES[config][1], _title(config)))
        return cached
    known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    raise RecipeError(f"--config {config!r} is neither a file nor a recipe name. Recipes: "
                      f"{', '.join(known)}.{_closest_choice(config, known)}")


def parse_overrides(args: list[str]) -> dict[str, str]:
    """['--steps', '10', '--lora_r=4'] -> {'steps': '10', 'lora_r': '4'} (dashes allowed)."""
    out, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise RecipeError(f"Expected --knob value, got {arg!r}. Example: --steps 100 --lora_r 16.")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                example = KNOBS[key].default if key in KNOBS else "<value>"
                raise RecipeError(f"--{key} needs a value, e.g. --{key} {example}.")
            value, i = args[i + 1], i + 1
        out[key] = value
        i += 1
    return out


def load(config: str | None, overrides: dict | None = None) -> dict:
    """Defaults <- recipe file <- overrides, each value checked. Adds '_name' (the recipe's
    file name without .yaml, or 'custom') and '_source'."""
    import yaml

    recipe = {name: knob.default for name, knob in KNOBS.items()}
    name, source = "custom", "defaults"
    if config:
        path = find(config)
        name, source = path.stem, str(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise RecipeError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise RecipeError(f"{path} must be a mapping of knob: value lines.")
        for key, value in raw.items():
            recipe[key] = coerce(str(key), value, f"in {path.name}")
    for key, value in (overrides or {}).items():
        recipe[key] = coerce(key, value, f"--{key}")
    recipe["_name"], recipe["_source"] = name, source
    return recipe


def check(recipe: dict) -> dict:
    """Cross-knob checks and the machine check, before any model is loaded. Returns the
    resolved recipe (quantization decided)."""
    import torch
    from kit.device import bnb_error, profile

    r = dict(recipe)
    if r["quantization"] == "auto":
        r["quantization"] = "nf4" if r["method"] == "qlora" else "none"
    if r["method"] == "qlora" and r["quantization"] not in ("nf4", "fp4"):
        raise RecipeError(f"method: qlora trains adapters on a 4-bit base; quantization must be nf4 "
                          f"or fp4 (or auto), got {r['quantization']!r}. Or use method: lora.")
    if r["method"] != "qlora" and r["quantization"] != "none":
        raise RecipeError(f"quantization: {r['quantization']} is for method: qlora (adapters on a "
                          f"4-bit base); with method: {r['method']} set quantization: none.")
    gpu = torch.cuda.is_available()
    if r["device"] == "cuda" and not gpu:
        raise RecipeError(f"Recipe '{r['_name']}' sets device: cuda, but this machine has no CUDA GPU "
                          "(python -m kit device shows what it has). Run it on a GPU machine (a "
                          "Colab T4 is free), or pick a CPU recipe: recipes/cpu-lora.yaml, "
                          "cpu-qlora.yaml, cpu-full.yaml.")
    if r["device"] == "cpu" and gpu:
        raise RecipeError("device: cpu on a machine with a CUDA GPU is not supported by the kit's "
                          "device policy; hide the GPU with CUDA_VISIBLE_DEVICES= to train on the CPU.")
    if r["optimizer"] == "paged_adamw_8bit" and not gpu:
        raise RecipeError("optimizer: paged_adamw_8bit needs a CUDA GPU; use optimizer: adamw here.")
    if r["quantization"] in ("nf4", "fp4"):
        problem = bnb_error(profile(), 4)
        if problem:
            raise RecipeError(f"quantization: {r['quantization']} cannot run here: {problem}")
    if r["data_file"] and r["hub_dataset"]:
        raise RecipeError("Set data_file or hub_dataset, not both.")
    if r["data_file"] and not Path(r["data_file"]).expanduser().is_file():
        raise RecipeError(f"data_file {r['data_file']!r} is not a file. Give the path of a .jsonl "
                          "or .csv file with prompt and response columns.")
    from kit.models import resolve
    try:
        resolve(r["model"])  # a hub id offline, or an unknown name, fails here, before loading
    except ValueError as e:
        raise RecipeError(f"model: {e}") from None
    if r["lora_alpha"] <= 0:
        raise RecipeError(f"lora_alpha must be > 0; got {r['lora_alpha']}. alpha = 2 x lora_r is common.")
    if r["lora_dropout"] >= 1:
        raise RecipeError(f"lora_dropout must be below 1; got {r['lora_dropout']}. Use 0.05, or 0.")
    return r


def output_dir(recipe: dict) -> Path:
    return Path(recipe["output_dir"] or f"runs/finetune/{recipe['_name']}")


# ---------------------------------------------------------------------------- writing recipes
def _yaml_value(value) -> str:
    import yaml
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(value) + "]"
    if isinstance(value, float):
        return f"{value:g}" if "e" not in f"{value:g}" else f"{value:.1e}"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def _wrap(text: str, width: int, indent: str) -> list[str]:
    import textwrap
    return textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False, break_long_words=False)


def render(values: dict, title: str) -> str:
    """A recipe file: every knob, its value, and its meaning and rule of thumb as comments.
    Knobs not in `values` get their defaults."""
    unknown = set(values) - set(KNOBS)
    if unknown:
        raise RecipeError(f"render got unknown knobs {sorted(unknown)}.")
    lines = [wrapped for line in title.strip().splitlines() for wrapped in (_wrap(line, 92, "# ") or ["#"])]
    lines += ["#", "# Run: python -m kit finetune --config <this file> [--knob value ...]",
              "# Every knob below is explained in kit/recipes.py (KNOBS), where these comments come from."]
    for heading, names in SECTIONS.values():
        lines += ["", f"# ---- {heading}"]
        for name in names:
            value = values.get(name, KNOBS[name].default)
            lines += _wrap(KNOBS[name].help, 92, "# ")
            lines.append(f"{name}: {_yaml_value(value)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- the recipes in recipes/
# name -> (title, knobs that differ from the defaults). `python -m kit sync-recipes` writes
# recipes/<name>.yaml from these; tests/test_recipes.py checks the files are in step.
# What the three GPU recipes share: a 7B model, the harder task, the QLoRA paper's adapter
# settings (r 16 on all linear layers, learning rate 2e-4 for a 7B model).
_GPU_7B = {"model": "qwen2.5-7b", "device": "cuda", "task": "extract", "n_train": 2000,
           "max_length": 384, "steps": 300, "learning_rate": 2e-4, "gradient_checkpointing": True,
           "eval_every": 50, "lora_r": 16, "lora_alpha": 32, "save_every": 50, "eval_examples": 100}
RECIPES: dict[str, tuple[str, dict]] = {
    "cpu-lora": (
        "LoRA on the bundled SmolLM2-135M, on a CPU (or any GPU): the dates task.\n"
        "Offline; the kit's default path. Notebook 03 is the same run, step by step.",
        {"method": "lora"}),
    "cpu-qlora": (
        "QLoRA on the bundled SmolLM2-135M: the same adapters on an NF4 base.\n"
        "Runs on a CPU through bitsandbytes' CPU backend; notebook 05 is the same run.",
        {"method": "qlora"}),
    "cpu-full": (
        "Full fine-tuning of the bundled SmolLM2-135M: every weight trains.\n"
        "16 bytes per parameter of weights, gradients and AdamW states; notebook 01.",
        {"method": "full", "save_every": 0}),
    "t4-qlora-7b": (
        "QLoRA of a 7B model on one 16 GB T4 (Colab's free GPU): fp16 compute, NF4 base.\n"
        "Needs the network for the model, and a GPU. {estimate}\n"
        "Not run by the project's tests (no GPU there).",
        _GPU_7B | {"method": "qlora", "batch_size": 4, "grad_accum": 4,
                   "optimizer": "paged_adamw_8bit", "save_every": 25}),
    "a100-lora": (
        "LoRA of a 7B model on one A100 (40 or 80 GB): bf16 base and compute.\n"
        "Needs the network and a GPU of compute capability 8.0 or newer (the device policy\n"
        "picks bf16 there). {estimate}\nNot run by the project's tests (no GPU there).",
        _GPU_7B | {"method": "lora", "batch_size": 8, "grad_accum": 2}),
    "a100-qlora": (
        "QLoRA of a 7B model on one A100: NF4 base, bf16 compute, a larger batch than the\n"
        "T4 recipe. Needs the network and a GPU. {estimate}\n"
        "Not run by the project's tests (no GPU there).",
        _GPU_7B | {"method": "qlora", "batch_size": 16}),
}


def estimate_for(values: dict):
    """kit.memory's estimate of one training step for a recipe (None if the model's
    architecture is not in kit.memory.ARCHS)."""
    from kit.memory import ARCHS, estimate

    r = {name: knob.default for name, knob in KNOBS.items()} | values
    if r["model"] not in ARCHS:
        return None
    quantized = r["method"] == "qlora"
    return estimate(r["model"], r["method"], bits=4 if quantized else None, r=r["lora_r"],
                    targets=r["lora_targets"], batch_size=r["batch_size"], seq_len=r["max_length"],
                    gradient_checkpointing=r["gradient_checkpointing"], optimizer=r["optimizer"],
                    lora_dropout=r["lora_dropout"])


def _title(name: str) -> str:
    title, values = RECIPES[name]
    if "{estimate}" in title:
        est = estimate_for(values)
        text = (f"kit.memory.estimate: {est.total / 1e9:.1f} GB for one step at these settings "
                f"(weights {est.weights / 1e9:.1f} GB, batch {values['batch_size']} x "
                f"{values['max_length']} tokens).")
        title = title.replace("{estimate}", text)
    return title


def sync(folder: Path = RECIPES_DIR) -> list[Path]:
    """Write recipes/<name>.yaml for every entry of RECIPES whose file differs; returns them."""
    changed = []
    for name, (_, values) in RECIPES.items():
        path = folder / f"{name}.yaml"
        text = render(values, _title(name))
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(path)
    return changed


# ---------------------------------------------------------------------------- accelerate launch configs
# The settings of recipes/accelerate/*.yaml (those files add the explanations); a test keeps
# the two in step. `accelerate_config` gives the file, written from here where the kit was
# installed without its repository.
_LAUNCH = {"compute_environment": "LOCAL_MACHINE", "num_machines": 1, "num_processes": 2,
           "mixed_precision": "no", "use_cpu": False, "main_training_function": "main"}
ACCELERATE: dict[str, dict] = {
    "cpu-2proc": _LAUNCH | {"distributed_type": "MULTI_GPU", "dynamo_config": {}},
    "multi-gpu": _LAUNCH | {"distributed_type": "MULTI_GPU", "gpu_ids": "all", "dynamo_config": {}},
    "fsdp-qlora": _LAUNCH | {"distributed_type": "FSDP", "fsdp_config": {
        "fsdp_version": 1, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_sharding_strategy": "FULL_SHARD", "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        "fsdp_offload_params": False, "fsdp_use_orig_params": True,
        "fsdp_cpu_ram_efficient_loading": True, "fsdp_sync_module_states": True}},
}


def accelerate_config(name: str) -> Path:
    """The `accelerate launch --config_file` for `name` (cpu-2proc, multi-gpu, fsdp-qlora)."""
    import yaml

    if name not in ACCELERATE:
        raise RecipeError(f"name must be one of {', '.join(ACCELERATE)}; got {name!r}.")
    path = RECIPES_DIR / "accelerate" / f"{name}.yaml"
    if path.is_file():
        return path
    cached = _cache() / "accelerate" / f"{name}.yaml"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(f"# Written by kit.recipes.accelerate_config; recipes/accelerate/{name}.yaml in\n"
                      "# the kit's repository is the same file with its explanations.\n"
                      + yaml.safe_dump(ACCELERATE[name], sort_keys=False))
    return cached
