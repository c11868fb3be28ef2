"""`python -m kit finetune --config <recipe> [--knob value ...]`

The notebooks' training path (kit.engine.train.finetune) driven by a recipe, for runs that
outgrow a notebook. It writes into the run folder (recipe knob output_dir):

    recipe.yaml        the recipe as run (all knobs, with their comments)
    checkpoints/       resumable checkpoints: run the same command again to carry on
    adapter/ | model/  the trained LoRA adapter (safetensors), or the full model
    history.json       every step's loss, learning rate, speed and memory; validation losses
    summary.json, summary.md   what was trained, on what hardware, and how well
    processes/rank-N.json      with several processes: what each one saw and ended with

The same command runs unchanged under `accelerate launch` (see kit/recipes/accelerate/):
each process trains on its own shard of the batches and the gradients are averaged.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
import zlib
from pathlib import Path

import torch
import yaml

from kit.arch import METHODS
from kit.commands import recipe as recipes
from kit.engine import checkpoint
from kit.engine.adapters import save_adapter, save_full
from kit.engine.evaluate import exact_match
from kit.engine.train import finetune
from kit.errors import command
from kit.files import read_json, write_json
from kit.machine.device import profile
from kit.machine.models import load_model, parameter_count
from kit.scratch.lora import trainable_parameters


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _accelerator():
    """An Accelerator when launched as several processes (accelerate launch, torchrun)."""
    if _world() <= 1:
        return None
    from accelerate import Accelerator  # only under a multi-process launch

    # On a CPU, accelerate only forms a process group (gloo) when told it is on the CPU.
    return Accelerator(cpu=not torch.cuda.is_available())


def _knobs(recipe: dict) -> dict:
    return {k: v for k, v in recipe.items() if k in recipes.KNOBS}


def _check_same_recipe(folder: Path, recipe: dict) -> None:
    """A resumed run must be the same recipe (but for the knobs in kit.commands.recipe.MAY_CHANGE),
    checked before the model loads; finetune() checks its own settings the same way."""
    saved_file = folder / "recipe.yaml"
    if not saved_file.exists() or not checkpoint.checkpoints(folder / "checkpoints"):
        return
    try:
        raw = yaml.safe_load(saved_file.read_text()) or {}
    except yaml.YAMLError:
        raise recipes.RecipeError(f"{saved_file} (the recipe of the run to resume) is damaged: it is not "
                                  "valid YAML. Start afresh with --resume false, or use another "
                                  "--output_dir.") from None
    saved = {k: recipes.coerce(k, raw.get(k, spec.default)) for k, spec in recipes.KNOBS.items()}
    try:
        checkpoint.check_settings(saved, _knobs(recipe), folder, recipes.MAY_CHANGE)
    except ValueError as e:
        raise recipes.RecipeError(f"{e} (--output_dir <new folder>, or --resume false)") from None


def _progress_lines(max_steps: int, say):
    """Where no progress bar shows (output to a file or a pipe): one line for the first step
    this run finishes, then one for each twentieth of max_steps."""
    every, shown = max(1, max_steps // 20), False

    def on_step(record: dict) -> None:
        nonlocal shown
        if not shown or record["step"] % every == 0 or record["step"] == max_steps:
            shown = True
            say(f"step {record['step']}/{max_steps}: loss {record['loss']:.4f}", flush=True)
    return on_step


def _weights_crc(model) -> int:
    crc = 0
    for name, t in sorted(checkpoint.trainable_state(model).items()):
        crc = zlib.crc32(t.float().numpy().tobytes(), zlib.crc32(name.encode(), crc))
    return crc


def run(recipe: dict) -> dict:
    """Train as the (checked) recipe says; returns the summary."""
    folder = recipes.output_dir(recipe)
    procs = _processes()
    say = procs["say"]
    data, skipped = recipes.read_data(recipe, say)
    if procs["main"]:
        _prepare_folder(folder, recipe, say)
    procs["wait"]()
    prof = profile()
    model, tokenizer = _load(recipe, prof, folder, procs, say)
    config = recipes.train_config(recipe, disable_tqdm=recipe["disable_tqdm"] or not sys.stderr.isatty())
    n_eval = min(recipe["eval_examples"], len(data["test"])) if "test" in data else 0
    base_file = folder / "base_eval.json"  # the base model's score, once per run (kept on resume)
    if procs["main"]:
        _score_base(model, tokenizer, data, n_eval, base_file, folder, say)
    say(f"training: {recipe['method']}, {recipe['max_steps']} steps of {recipe['per_device_train_batch_size']}"
        f" x {recipe['gradient_accumulation_steps']}" + (f" x {procs['world']} processes" if procs["world"] > 1 else "") +
        f"; checkpoints in {folder / 'checkpoints'}", flush=True)
    t0 = time.perf_counter()
    try:
        result = finetune(model, tokenizer, data, recipe["method"], config,
                          checkpoint_dir=folder / "checkpoints", accelerator=procs["accelerator"],
                          trace_batches=True,  # history.json: which data each step saw
                          on_step=_progress_lines(recipe["max_steps"], say) if config.disable_tqdm else None)
    except KeyboardInterrupt:
        say(f"\ninterrupted: the finished steps are checkpointed in {folder / 'checkpoints'}; "
            "run the same command to resume.")
        raise
    wall = time.perf_counter() - t0
    if procs["world"] > 1:  # each process: which batches it trained on, and the weights it ended with
        (folder / "processes").mkdir(exist_ok=True)
        write_json(folder / "processes" / f"rank-{procs['rank']}.json", {
            "rank": procs["rank"], "processes": procs["world"],
            "batch_crc": [s["batch_crc"] for s in result.history.steps],
            "weights_crc": _weights_crc(result.model)})
    procs["wait"]()
    if not procs["main"]:
        return {}
    write_json(folder / "history.json", result.history.as_dict())
    summary = _summary(recipe, result, prof, procs["world"], skipped, wall)
    if not result.finished:
        say(f"stopped after step {summary['steps_done']} of {recipe['max_steps']} (stop_after); checkpoint "
            f"{result.checkpoint}. Run the same command to continue.")
        write_json(folder / "summary.json", summary)
        return summary
    return _finish(recipe, result.model, tokenizer, data, n_eval, base_file, folder, summary, say)


def _processes() -> dict:
    """This process among those `accelerate launch` started (one, without it): its rank, the
    number of processes, whether it is the main one, `say` (prints on the main process only) and
    `wait` (waits for the others)."""
    accelerator = _accelerator()
    main = accelerator is None or accelerator.is_main_process
    if accelerator is not None and torch.cuda.is_available():
        torch.cuda.set_device(accelerator.local_process_index)  # one GPU per process
    return {"accelerator": accelerator, "main": main,
            "rank": accelerator.process_index if accelerator else 0,
            "world": accelerator.num_processes if accelerator else 1,
            "say": print if main else (lambda *a, **k: None),
            "wait": accelerator.wait_for_everyone if accelerator is not None else (lambda: None)}


def _prepare_folder(folder: Path, recipe: dict, say) -> None:
    """The run folder: old checkpoints removed (resume: false) or checked against this recipe,
    and the recipe as run written into it."""
    if not recipe["resume"] and (folder / "checkpoints").exists():
        shutil.rmtree(folder / "checkpoints")
        say(f"resume: false -> removed the old checkpoints in {folder}")
    _check_same_recipe(folder, recipe)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(recipes.render(
        _knobs(recipe), f"Recipe '{recipe['_name']}' as run (from {recipe['_source']})."))


def _load(recipe: dict, prof, folder: Path, procs: dict, say):
    """The model and tokenizer the recipe names, stored as it says (4-bit codes in the compute
    dtype under FSDP, which shards float tensors of one dtype), after a line on the machine and,
    on a GPU, the estimate of one step's memory."""
    say(f"recipe  : {recipe['_name']} ({recipe['_source']}) -> {folder}")
    say(f"machine : {prof.summary().splitlines()[0]}" + (f"; {procs['world']} processes" if procs["world"] > 1 else ""))
    est = recipes.estimate_for(recipe) if prof.device == "cuda" else None
    if est is not None:
        say(f"estimate: {est.total / 1e9:.1f} GB for one step (kit.machine.memory: weights {est.weights / 1e9:.1f} GB, "
            f"batch {recipe['per_device_train_batch_size']} x {recipe['max_length']} tokens, 16-bit GPU dtypes)")
    quant = None if recipe["quantization"] == "none" else recipe["quantization"]
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")
    storage = prof.compute_dtype if fsdp and quant in ("nf4", "fp4") else None
    if storage is not None:
        say(f"fsdp    : 4-bit codes stored as {str(storage).replace('torch.', '')} so FSDP can shard them")
    return load_model(recipe["model"], quantization=quant, double_quant=recipe["double_quant"],
                      quant_storage=storage)


def _score_base(model, tokenizer, data, n_eval: int, base_file: Path, folder: Path, say) -> None:
    """The base model's exact match on the test examples, once per run (a resumed run keeps it)."""
    if base_file.exists() and not checkpoint.checkpoints(folder / "checkpoints"):
        base_file.unlink()  # a fresh start: score this base, not the previous run's
    if n_eval and not base_file.exists():
        say(f"scoring the base model on {n_eval} test examples ...")
        base = exact_match(model, tokenizer, data["test"], n=n_eval)
        write_json(base_file, {k: base[k] for k in ("accuracy", "correct", "total")})


def _summary(recipe: dict, result, prof, world: int, skipped: int, wall: float) -> dict:
    history, model = result.history, result.model
    return {"recipe": recipe["_name"], "method": recipe["method"], "model": recipe["model"],
            "quantization": recipe["quantization"], "processes": world, "skipped_rows": skipped,
            "device": prof.as_dict(), "steps_done": len(history.steps), "steps": recipe["max_steps"],
            "finished": result.finished, "resumed_at": history.resumed_at,
            "first_loss": history.steps[0]["loss"] if history.steps else None,
            "last_loss": history.steps[-1]["loss"] if history.steps else None,
            "val_loss": history.evals[-1]["val_loss"] if history.evals else None,
            "median_step_s": history.median_step_s(),
            "wall_s_this_run": wall, "checkpoint": result.checkpoint,
            "trainable_parameters": trainable_parameters(model),
            "parameters": parameter_count(model)}


def _finish(recipe: dict, model, tokenizer, data, n_eval: int, base_file: Path, folder: Path,
            summary: dict, say) -> dict:
    """A finished run: the adapter (or the whole model) saved, exact match before and after,
    summary.json and summary.md written."""
    if METHODS[recipe["method"]].adapters:
        saved = save_adapter(model, folder / "adapter")
    else:
        saved = save_full(model, folder / "model", tokenizer)
    summary["saved"] = {"path": saved["path"], "mb": saved["mb"]}
    if n_eval:
        after = exact_match(model, tokenizer, data["test"], n=n_eval)
        before = read_json(base_file, "base model's score", {"accuracy": (int, float)})
        summary["accuracy_before"] = before["accuracy"]
        summary["accuracy_after"] = after["accuracy"]
    write_json(folder / "summary.json", summary)
    (folder / "summary.md").write_text(summary_markdown(summary))
    say(summary_markdown(summary))
    return summary


def summary_markdown(s: dict) -> str:
    share = 100 * s["trainable_parameters"] / s["parameters"]
    rows = [("recipe", s["recipe"]), ("model", s["model"]), ("method", s["method"]),
            ("base quantization", s["quantization"]),
            ("hardware", f"{s['device']['device']} {s['device'].get('name', '')}, "
                         f"{s['device']['compute_dtype']}"
                         + (f", {s['processes']} processes" if s["processes"] > 1 else "")),
            ("trainable", f"{s['trainable_parameters']:,} of {s['parameters']:,} ({share:.2f}%)"),
            ("steps", f"{s['steps_done']} of {s['steps']}" +
             (f" (resumed at {', '.join(map(str, s['resumed_at']))})" if s["resumed_at"] else "")),
            ("loss first -> last step", f"{s['first_loss']:.4f} -> {s['last_loss']:.4f}")]
    if s.get("val_loss") is not None:
        rows.append(("validation loss at the end", f"{s['val_loss']:.4f}"))
    rows.append(("median step", f"{s['median_step_s']:.2f} s"))
    if s.get("skipped_rows"):
        rows.append(("data rows skipped (skip_bad_rows)", f"{s['skipped_rows']}"))
    if "accuracy_after" in s:
        rows.append(("exact match before -> after",
                     f"{100 * s['accuracy_before']:.0f}% -> {100 * s['accuracy_after']:.0f}%"))
    if "saved" in s:
        rows.append(("saved", f"{s['saved']['path']} ({s['saved']['mb']:.1f} MB)"))
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"


@command
def main(argv: list[str]) -> int:
    """Entry point of `python -m kit finetune [--config C] [--knob value ...]`: 0 done (or
    stopped by stop_after), 2 bad recipe or data (one line: kit.errors), 130 interrupted
    (Ctrl-C; checkpointed)."""
    if "-h" in argv or "--help" in argv:
        recipes.argument_parser().print_help()
        return 0
    config, overrides = recipes.parse_args(argv)
    recipe = recipes.check(recipes.load(config, overrides))
    try:
        run(recipe)
    except KeyboardInterrupt:
        return 130
    return 0
