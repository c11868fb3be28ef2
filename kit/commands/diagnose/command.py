"""The two entry points: a recipe before training (`diagnose_recipe`), a run folder after it
(`diagnose_run`), and `python -m kit diagnose` (`main`).
"""
from __future__ import annotations

from pathlib import Path

from kit.arch import GPUS
from kit.commands import recipe as recipes
from kit.commands.diagnose.adapters import (check_adapter_weights, check_adapters, check_gradients,
                                            check_trainable_dtypes)
from kit.commands.diagnose.findings import Report, check_history, check_memory
from kit.commands.diagnose.labels import check_labels, label_view
from kit.engine.data import collate, pad_token_id, tokenize
from kit.errors import UserError
from kit.machine.device import profile


# ---------------------------------------------------------------------------- the two entry points
def diagnose_recipe(recipe: dict, gpu: str = "T4", n_rows: int = 64) -> Report:
    """Before training: the recipe's data, labels, model, adapters, one backward pass, memory."""
    from kit.engine.train import prepare_model
    from kit.machine.models import load_model

    if gpu not in GPUS:
        raise UserError(f"gpu must be one of {list(GPUS)}; got {gpu!r}.")
    report = Report()
    data, _ = recipes.read_data(recipe, report.notes.append)
    model, tokenizer = load_model(recipe["model"], quantization=None if recipe["quantization"] == "none"
                                  else recipe["quantization"])
    train = data["train"].select(range(min(n_rows, len(data["train"]))))
    rows = list(tokenize(train, tokenizer, max_length=recipe["max_length"]))
    report.notes.append("one example, trained tokens in [brackets]:\n  " + label_view(rows[0], tokenizer))
    report.findings += check_labels(rows, tokenizer)
    model = prepare_model(model, recipe["method"], recipes.train_config(recipe))
    report.findings += check_adapters(model, recipe["lora_target_modules"])
    report.findings += check_trainable_dtypes(model, profile().grad_scaling)
    batch = collate([{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows[:2]],
                    pad_token_id(tokenizer))
    found, norms = check_gradients(model, batch)
    report.findings += found
    report.notes.append("gradient norm per group of layers: "
                        + ", ".join(f"{g} {n:.3g}" for g, n in sorted(norms.items())))
    found, notes = check_memory(recipe, gpu)
    report.findings += found
    report.notes += notes
    return report


def diagnose_run(folder) -> Report:
    """After training: a `python -m kit finetune` run folder's history and adapter."""
    from kit.files import read_json, read_tensors

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--run {str(folder)!r} is not a folder. Give the output_dir of a finished "
                        "`python -m kit finetune` run (runs/finetune/<recipe>).")
    if not (folder / "history.json").is_file():
        raise UserError(f"{folder} is not a run folder: it has no history.json. Give the output_dir of a "
                        "`python -m kit finetune` run (runs/finetune/<recipe>).")
    report = Report()
    history = read_json(folder / "history.json")
    steps = history.get("steps", [])
    report.notes.append(f"run {folder}: {len(steps)} steps, {len(history.get('evals', []))} validations"
                        + (f", loss {steps[0]['loss']:.4f} -> {steps[-1]['loss']:.4f}" if steps else ""))
    report.findings += check_history(history)
    adapter = folder / "adapter" / "adapter_model.safetensors"
    if adapter.is_file():
        report.findings += check_adapter_weights(read_tensors(adapter, "adapter"))
    return report


def main(argv: list[str]) -> int:
    """`python -m kit diagnose --config <recipe> [--gpu T4] [--knob value ...]` or `--run <folder>`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kit diagnose", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a finished run folder (the output_dir of python -m kit finetune)")
    parser.add_argument("--gpu", default="T4", help=f"the GPU for the memory check: one of {list(GPUS)}")
    args, rest = parser.parse_known_args(argv)
    if args.gpu not in GPUS:
        raise UserError(f"--gpu must be one of {list(GPUS)}; got {args.gpu!r}.")
    if args.run:
        if rest:
            raise UserError(f"--run takes no recipe knobs; got {rest}. Diagnose a recipe with --config instead.")
        report = diagnose_run(args.run)
    else:
        config, overrides = recipes.parse_args(rest)
        report = diagnose_recipe(recipes.check(recipes.load(config, overrides)), gpu=args.gpu)
    print(report.text(), end="")
    return 0
