"""`python -m kit gpu-check`: confirm the GPU paths on the machine at hand.

For LoRA and QLoRA (with --methods, full fine-tuning too) on the bundled model, in the
dtype the device policy picks (fp16 with a gradient scaler on a T4, bf16 from compute
capability 8.0), it runs:
  1. one step under the memory ledger (kit.machine.memory.measure_step) against the estimator,
     component by component;
  2. a few optimizer steps of kit.engine.train.finetune, with the CUDA peak
     (torch.cuda.max_memory_allocated) against the estimator's total.
and prints one table, also written to runs/gpu-check/ (gpu_check.md, gpu_check.json).

Run it on a T4 or any CUDA GPU and quote its table with the GPU named. On a machine
without a GPU it refuses, unless --allow-cpu (which tests the script itself: the
ledger still compares, there is no CUDA peak).

--recipe NAME takes the model, method, rank, batch, gradient checkpointing and optimizer
from a recipe (recipes/NAME.yaml); --random-weights builds that model's architecture with
random weights (kit.machine.models.ensure_random), so a 7B recipe is measured without downloading
the 7B: memory and speed are the real model's, the losses mean nothing. On a bigger GPU,
KIT_COMPUTE_CAPABILITY=7.5 makes the kit follow a T4's policy (fp16 with a scaler).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from kit.arch import METHOD_NAMES, quantization
from kit.commands import recipe as recipes
from kit.engine.data import batches, make_task, pad_token_id, tokenize
from kit.engine.train import TrainConfig, finetune, prepare_model
from kit.errors import UserError, reported
from kit.files import RUNS, write_json
from kit.machine import memory as M
from kit.machine.device import bnb_error, library_versions, profile
from kit.machine.models import ensure_random, load_model, resolve
from kit.scratch.lora import trainable_parameters


def check_method(name: str, method: str, steps: int, config: TrainConfig | None = None,
                 task: str = "dates") -> dict:
    """One method measured: the ledger of one step against the estimate, then `steps` steps
    of the loop with the CUDA peak. `config` sets the batch, the adapters, checkpointing and
    the optimizer (default: TrainConfig's, batch 8)."""
    config = config or TrainConfig()
    prof = profile()
    t0 = time.perf_counter()
    model, tokenizer = load_model(name, quantization=quantization(method))
    load_s = time.perf_counter() - t0
    data = make_task(task, n_train=max(64, steps * config.per_device_train_batch_size), n_val=0, n_test=0, seed=0)
    model = prepare_model(model, method, config)
    ledger = _ledger_against_estimate(model, tokenizer, data, method, config, prof)
    # a few real steps; on CUDA the loop records the peak allocated memory
    if prof.device == "cuda":
        torch.cuda.empty_cache()
    t0 = time.perf_counter()
    result = finetune(model, tokenizer, data, method, config, max_steps=steps, eval_steps=0,
                      disable_tqdm=True, seed=0)
    wall = time.perf_counter() - t0
    hist = result.history.steps
    later = hist[1:] or hist  # the first step pays for kernel selection and allocation
    return {
        "method": method, "model": name, "device": prof.device, "gpu": prof.name,
        "compute_dtype": str(prof.compute_dtype).replace("torch.", ""),
        "grad_scaling": prof.grad_scaling,
        "adapter_dtypes": sorted({str(p.dtype).replace("torch.", "") for p in result.model.parameters()
                                  if p.requires_grad}),
        "r": config.lora_r, "gradient_checkpointing": config.gradient_checkpointing, "optimizer": config.optim,
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "trainable": trainable_parameters(result.model),
        "load_s": load_s,
        "steps": len(hist), "wall_s": wall,
        "median_step_s": result.history.median_step_s(skip=1),
        "tokens_per_s": sum(s["tokens"] for s in later) / sum(s["step_time"] for s in later),
        "loss_first": hist[0]["loss"], "loss_last": hist[-1]["loss"],
        "cuda_peak": max(s["memory"] for s in hist) if prof.device == "cuda" else None,
        "batch_size": config.per_device_train_batch_size, **ledger,
    }


def _ledger_against_estimate(model, tokenizer, data, method: str, config: TrainConfig, prof) -> dict:
    """One step under the ledger (a throw-away optimizer) against the estimate for that batch,
    and the estimate for the longest example (what the CUDA peak is compared with)."""
    train = tokenize(data["train"], tokenizer)
    t_max = max(len(ids) for ids in train["input_ids"])
    batch = next(batches(train, config.per_device_train_batch_size, pad_token_id(tokenizer), seed=123))
    params = [p for p in model.parameters() if p.requires_grad]
    ledger = M.measure_step(model, batch, torch.optim.AdamW(params, lr=0.0))
    bits = 4 if quantization(method) else (16 if prof.compute_dtype != torch.float32 else 32)
    common = dict(r=config.lora_r, targets=config.lora_target_modules,
                  gradient_checkpointing=config.gradient_checkpointing,
                  compute_dtype=prof.compute_dtype, lora_dropout=config.lora_dropout, padded=True,
                  batch_size=config.per_device_train_batch_size,
                  precision="amp" if prof.compute_dtype != torch.float32 else "32")
    est_batch = M.estimate(model.config, method, bits=bits, seq_len=batch["input_ids"].shape[1], **common)
    est_peak = M.estimate(model.config, method, bits=bits, seq_len=t_max, optimizer=config.optim, **common)
    # the ledger counts tensors that exist at once; the estimate's workspace (transient
    # buffers at the backward peak) is only in the CUDA peak comparison
    return {"ledger_total": ledger.total, "estimate_for_ledger": est_batch.total - est_batch.workspace,
            "ledger_vs_estimate": M.compare(ledger, est_batch),
            "estimate_peak": est_peak.total, "longest_tokens": t_max}


def _mb(n) -> str:
    return f"{n / 1e6:.1f}" if n else "-"


def table(rows: list[dict]) -> str:
    head = ("| method | device | compute | adapters | s/step | tokens/s | loss first -> last | "
            "ledger MB | estimate MB | CUDA peak MB | estimate at peak MB | peak / estimate |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        peak = r["cuda_peak"]
        ratio = f"{peak / r['estimate_peak']:.2f}" if peak else "-"
        lines.append(
            f"| {r['method']} | {r['device']} {r['gpu']} | {r['compute_dtype']}"
            f"{' + scaler' if r['grad_scaling'] else ''} | {'/'.join(r['adapter_dtypes'])} | "
            f"{r['median_step_s']:.3f} | {r['tokens_per_s']:.0f} | "
            f"{r['loss_first']:.3f} -> {r['loss_last']:.3f} | {r['ledger_total'] / 1e6:.1f} | "
            f"{r['estimate_for_ledger'] / 1e6:.1f} | {_mb(peak)} | {r['estimate_peak'] / 1e6:.1f} | "
            f"{ratio} |")
    return "\n".join(lines) + "\n"


def _check_arguments(prof, steps: int, allow_cpu: bool, recipe: str | None,
                     methods: list[str] | None) -> None:
    """The command's arguments, checked before anything loads (a UserError names the fix)."""
    if prof.device != "cuda" and not allow_cpu:
        raise UserError("gpu-check: this machine has no CUDA GPU (python -m kit device), so there are "
                        "no GPU paths to check. Run it on a GPU machine (a Colab T4 is free), or pass "
                        "--allow-cpu to exercise the script on the CPU.")
    if steps < 1:
        raise UserError(f"gpu-check: --steps must be >= 1; got {steps}.")
    if methods is not None and (not methods or any(m not in METHOD_NAMES for m in methods)):
        raise UserError(f"gpu-check: --methods takes a comma-separated list from "
                        f"{', '.join(METHOD_NAMES)}; got {','.join(methods)!r}. "
                        "E.g. --methods full,lora,qlora.")
    if recipe and methods is not None:
        raise UserError("gpu-check: --recipe sets the method; leave out --methods (or leave out --recipe).")


def _recipe_settings(recipe: str, prof) -> tuple[str, list[str], dict, str]:
    """(model, methods, check_method's settings, a note) from the recipe named `recipe`."""
    try:
        values = recipes.load(recipe)
    except (recipes.RecipeError, FileNotFoundError, ValueError) as e:
        raise UserError(f"gpu-check: --recipe {recipe}: {e}") from None
    optim = values["optim"] if prof.device == "cuda" else "adamw_torch"
    settings = {"task": values["task"], "config": recipes.train_config(values, optim=optim)}
    est, note = recipes.estimate_for(values), ""
    if est is not None:
        note = (f"Recipe {values['_name']}: kit.machine.memory.estimate at its max_length "
                f"{values['max_length']} tokens: {est.total / 1e9:.2f} GB; the table's estimate "
                f"is at the longest example measured here.")
    return values["model"], [values["method"]], settings, note


@reported
def main(steps: int = 5, model: str = "smollm2-135m", allow_cpu: bool = False,
         out: str | None = None, recipe: str | None = None, random_weights: bool = False,
         methods: list[str] | None = None) -> int:
    """`python -m kit gpu-check`: 0 done, 2 (one line on stderr, kit.errors) if it cannot run here."""
    prof = profile()
    _check_arguments(prof, steps, allow_cpu, recipe, methods)
    settings, note = {"config": TrainConfig(lora_dropout=0.05)}, ""
    if recipe:
        model, methods, settings, note = _recipe_settings(recipe, prof)
    if random_weights:
        arch = model
        t0 = time.perf_counter()
        try:
            model = str(ensure_random(arch, dtype=prof.compute_dtype))
        except ValueError as e:
            raise UserError(f"gpu-check: --random-weights: {e}") from None
        note += (f"\nRandom weights with {arch}'s architecture (built in {time.perf_counter() - t0:.0f} s): "
                 "memory and speed are the real model's; the losses mean nothing.")
    elif not recipe:
        try:
            resolve(model)  # --model: an unknown name, or a hub id offline, before anything loads
        except ValueError as e:
            raise UserError(f"gpu-check: --model: {e}") from None
    print(prof.summary())
    if methods is None:
        methods = ["lora"] + (["qlora"] if bnb_error(prof, 4) is None else [])
    elif "qlora" in methods and bnb_error(prof, 4):
        raise UserError(f"gpu-check: qlora cannot run here: {bnb_error(prof, 4)}")
    rows = []
    for method in methods:
        print(f"\n{method}: {steps} steps of {model} ...", flush=True)
        rows.append(check_method(model, method, steps, **settings))
    text = table(rows)
    print("\n" + text + (f"\n{note.strip()}\n" if note else ""))
    folder = Path(out or RUNS / "gpu-check")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gpu_check.md").write_text(f"{prof.summary()}\n\n{text}" + (f"\n{note.strip()}\n" if note else ""))
    write_json(folder / "gpu_check.json",
               {"device": prof.as_dict(), "versions": library_versions(), "recipe": recipe,
                "random_weights": random_weights, "note": note.strip(), "rows": rows}, default=str)
    print(f"written to {folder}/gpu_check.md and gpu_check.json")
    return 0
