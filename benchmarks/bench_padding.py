"""What padding costs: the same LoRA steps on conversations of varying length, batched at random
and grouped by length (TrainConfig.train_sampling_strategy), side by side in one process.

    python benchmarks/bench_padding.py                 # 12 steps of batch 8, the chat task
    python benchmarks/bench_padding.py --json out.json

A batch pads every example to its longest one; on data whose lengths vary, much of a random
batch is padding that the model computes and then ignores. Grouping batches by length cuts it
without changing what is learned from each example (the loss is a mean over answer tokens;
tests/test_data.py checks that the same examples give the same loss either way). Printed: the
share of each batch that was padding, tokens per second (real tokens only) and seconds per step.
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

from kit.engine.data import make_task  # noqa: E402
from kit.engine.train import finetune  # noqa: E402
from kit.machine.device import profile  # noqa: E402
from kit.machine.models import load_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--json", help="also write the rows (and the machine) to this JSON file")
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be >= 2 (the first step is a warm-up and is not timed)")
    data = make_task("chat", n_train=200, n_val=0, n_test=0, seed=0)
    rows = []
    for sampling in ("random", "group_by_length"):
        model, tok = load_model(args.model)
        result = finetune(model, tok, data, "lora", max_steps=args.steps, max_length=384,
                          per_device_train_batch_size=args.batch_size, eval_steps=0, disable_tqdm=True,
                          train_sampling_strategy=sampling, lora_dropout=0.0)
        timed = result.history.steps[1:]              # step 1 is a warm-up
        rows.append({"sampling": sampling,
                     "padding": statistics.fmean(s["padding"] for s in timed),
                     "tokens_per_s": sum(s["tokens"] for s in timed) / sum(s["step_time"] for s in timed),
                     "step_s": statistics.median(s["step_time"] for s in timed),
                     "tokens": sum(s["tokens"] for s in timed), "loss_last": timed[-1]["loss"]})
        print(f"{sampling:16s} padding {rows[-1]['padding']:6.1%}  {rows[-1]['tokens_per_s']:7.0f} tokens/s  "
              f"{rows[-1]['step_s']:.2f} s/step", flush=True)
    gain = rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"]
    print(f"grouped by length: {gain:.2f}x the tokens per second of random batches")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": "python benchmarks/bench_padding.py " + " ".join(sys.argv[1:]),
            "device": profile().as_dict(), "model": args.model, "steps": args.steps,
            "batch_size": args.batch_size, "recorded_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "rows": rows, "gain": gain}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
