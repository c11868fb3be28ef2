"""Full fine-tuning, LoRA and QLoRA side by side, and the kit's loop against a bare one.

    python benchmarks/bench_methods.py              # 10 steps of batch 8 on the dates task
    python benchmarks/bench_methods.py --steps 4    # a quick check

For each method: median step time, tokens/s and the memory ledger of one step
(kit.machine.memory.measure_step) for the kit's `finetune`, and the same steps in a bare
transformers + peft loop written here with the same settings (same model, seed,
batches, AdamW, clipping, cosine schedule without warm-up), in the order kit, bare,
bare, kit (a machine that drifts weighs on both alike). The overhead ratio kit / bare
should be <= 1.00 within its spread (the two rounds' ratios); with the same seed both
loops also see the same losses.
Timings on a shared CPU are noisy: read them together with the load average printed.
"kit/bare CPU" compares the process' CPU seconds of each whole run (preparation included),
which other processes disturb less than wall-clock time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from kit.arch import DEFAULT_LR  # noqa: E402
from kit.engine.data import batches, make_task, tokenize  # noqa: E402
from kit.engine.train import TrainConfig, finetune, precision  # noqa: E402
from kit.machine.device import profile  # noqa: E402
from kit.machine.models import load_model  # noqa: E402

MB = 1e6


def bare_loop(model, train_set, pad_id, method, steps, batch_size, lr, seed, cfg):
    """The same training with transformers + peft + torch only: the reference for overhead."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import get_cosine_schedule_with_warmup

    torch.manual_seed(seed)
    if method == "full":
        model.float().requires_grad_(True)
    else:
        if method == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=cfg.lora_dropout,
                                                 target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)  # as the kit's
    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, steps)
    amp = precision(profile())
    device = params[0].device
    stream = batches(train_set, batch_size, pad_id, seed=seed)
    model.train()
    losses, times, tokens = [], [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = {k: v.to(device) for k, v in next(stream).items()}
        with torch.autocast(device.type, dtype=amp["autocast"] or torch.float32,
                            enabled=amp["autocast"] is not None):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        tokens.append(int(batch["attention_mask"].sum()))
    return losses, times, tokens


def kit_run(method, data, cfg, args) -> dict:
    """The kit's finetune on a fresh model: step times, tokens, losses, CPU seconds, ledger."""
    model, tok = load_model(args.model, quantization="nf4" if method == "qlora" else None)
    train_set = tokenize(data["train"], tok)
    cpu0 = time.process_time()
    result = finetune(model, tok, train_set, method, cfg)
    cpu = time.process_time() - cpu0  # CPU seconds: steadier than wall time on a shared CPU
    hist = result.history
    return {"times": [s["step_time"] for s in hist.steps], "tokens": [s["tokens"] for s in hist.steps],
            "losses": hist.losses, "cpu": cpu, "peak": hist.steps[-1]["memory"], "memory_kind": hist.memory_kind,
            "ledger": ledger(result.model, train_set, tok.pad_token_id, args.batch_size)}


def bare_run(method, data, cfg, args) -> dict:
    """The same steps in the bare loop on a fresh model."""
    model, tok = load_model(args.model, quantization="nf4" if method == "qlora" else None)
    train_set = tokenize(data["train"], tok)
    cpu0 = time.process_time()
    losses, times, tokens = bare_loop(model, train_set, tok.pad_token_id, method, args.steps,
                                      args.batch_size, cfg.learning_rate, cfg.seed, cfg)
    return {"times": times, "tokens": tokens, "losses": losses, "cpu": time.process_time() - cpu0}


def ledger(model, train_set, pad_id, batch_size):
    """One measured step (kit.machine.memory.measure_step), or None if kit.machine.memory is absent."""
    try:
        from kit.machine.memory import measure_step
    except ImportError:
        return None
    batch = next(batches(train_set, batch_size, pad_id, seed=123))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-12)
    return measure_step(model, batch, optimizer)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="full,lora,qlora")
    ap.add_argument("--no-bare", action="store_true", help="skip the bare transformers + peft loop")
    ap.add_argument("--json", help="also write the rows (and the machine) to this JSON file")
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be >= 2 (the first step is a warm-up and is not timed)")

    prof = profile()
    data = make_task("dates", n_train=200, n_val=1, n_test=1, seed=0)
    rows = []
    for method in args.methods.split(","):
        lr = DEFAULT_LR[method]
        cfg = TrainConfig(max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=lr,
                          warmup_steps=0, eval_steps=0, disable_tqdm=True,
                          lora_dropout=0.0)  # no dropout: both loops then compute the same losses
        # ABBA: kit, bare, bare, kit, so that a machine that speeds up or slows down over the
        # minutes (caches, other processes, clocks) weighs on both loops alike
        order = ["kit"] if args.no_bare else ["kit", "bare", "bare", "kit"]
        runs = {"kit": [], "bare": []}
        for which in order:
            print(f"[{method}] {which} loop ...", file=sys.stderr, flush=True)
            runs[which].append((kit_run if which == "kit" else bare_run)(method, data, cfg, args))
        kit = runs["kit"][0]
        times = lambda which: [t for r in runs[which] for t in r["times"][1:]]  # step 1 is a warm-up
        tokens = lambda which: [n for r in runs[which] for n in r["tokens"][1:]]
        row = {"method": method, "lr": lr, "kit_s": statistics.median(times("kit")),
               "kit_tps": sum(tokens("kit")) / sum(times("kit")), "kit_loss": kit["losses"][-1],
               "peak": kit["peak"], "kit_cpu": statistics.fmean(r["cpu"] for r in runs["kit"]),
               "ledger": kit["ledger"]}
        if runs["bare"]:
            row.update(bare_s=statistics.median(times("bare")), bare_tps=sum(tokens("bare")) / sum(times("bare")),
                       bare_loss=runs["bare"][0]["losses"][-1])
            row["ratio"] = row["kit_s"] / row["bare_s"]
            row["cpu_ratio"] = row["kit_cpu"] / statistics.fmean(r["cpu"] for r in runs["bare"])
            # the first pair (kit then bare) and the second (bare then kit): the spread of the ratio
            row["ratio_rounds"] = [statistics.median(k["times"][1:]) / statistics.median(b["times"][1:])
                                   for k, b in zip(runs["kit"], runs["bare"][::-1])]
        rows.append(row)
        memory_kind = kit["memory_kind"]
    print(report(rows, prof, args, memory_kind))
    if args.json:
        payload = {"command": "python benchmarks/bench_methods.py " + " ".join(sys.argv[1:]),
                   "device": prof.as_dict(), "steps": args.steps, "batch_size": args.batch_size,
                   "model": args.model, "recorded_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                   "rows": [r | {"ledger": r["ledger"].as_dict() if r["ledger"] else None} for r in rows]}
        Path(args.json).write_text(json.dumps(payload, indent=1, default=str))


def report(rows, prof, args, memory_kind) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"## Fine-tuning methods: {args.model}, dates task, batch {args.batch_size}, "
             f"{args.steps} steps (median step time, first step excluded)", "",
             "```", prof.summary(), f"threads     : {torch.get_num_threads()}, "
             f"load average {load:.1f} on {os.cpu_count()} CPUs", "```", "",
             "| method | lr | kit s/step | kit tokens/s | bare s/step | bare tokens/s | kit/bare wall (each round) "
             "| kit/bare CPU | loss kit / bare | peak MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bare = (f"{r['bare_s']:.2f} | {r['bare_tps']:.0f} | {r['ratio']:.3f} "
                f"({', '.join(f'{x:.3f}' for x in r['ratio_rounds'])}) | {r['cpu_ratio']:.3f} | "
                f"{r['kit_loss']:.4f} / {r['bare_loss']:.4f}") if "bare_s" in r \
            else f"- | - | - | - | {r['kit_loss']:.4f} / -"
        lines.append(f"| {r['method']} | {r['lr']:g} | {r['kit_s']:.2f} | {r['kit_tps']:.0f} | "
                     f"{bare} | {r['peak'] / MB:.0f} |")
    lines += ["", "peak: " + ("torch.cuda.max_memory_allocated during the kit run" if memory_kind ==
                                  "cuda_peak_allocated" else "the process' peak RSS so far (on a CPU "
                                  "it only grows from one method to the next; compare the ledger)")]
    if any(r["ledger"] is not None for r in rows):
        lines += ["", "Memory ledger of one step (kit.machine.memory.measure_step), MB:", "",
                  "| method | weights | quant constants | trainable | gradients | optimizer "
                  "| activations | logits | total |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            led = r["ledger"]
            if led is not None:
                lines.append(f"| {r['method']} | {led.weights / MB:.1f} | {led.quant_constants / MB:.1f} | "
                             f"{led.trainable_params / MB:.1f} | {led.gradients / MB:.1f} | "
                             f"{led.optimizer / MB:.1f} | {led.activations / MB:.1f} | "
                             f"{led.logits / MB:.1f} | {led.total / MB:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
