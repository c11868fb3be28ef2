"""What scoring only the answer positions saves: one training step (forward and backward) with
the model's own loss, `model(**batch).loss`, and with the loop's `answer_loss`, on the same
batches, alternated in one process, for each method.

    python benchmarks/bench_answer_loss.py                  # 8 batches of 8 dates examples
    python benchmarks/bench_answer_loss.py --json out.json

The output layer turns every position into logits over the whole vocabulary (576 x 49,152 for
the bundled model), yet the loss scores only the positions that predict an answer token; the
rest are computed and thrown away. `answer_loss` asks the model for the logits at the scored
positions only (transformers' `logits_to_keep`). Printed: each way's median seconds per step,
the ratio, and the largest relative difference between the two losses (float rounding only;
tests/test_train.py checks the gradients too).
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

from kit.arch import quantization  # noqa: E402
from kit.engine.data import make_task, pad_token_id, tokenize  # noqa: E402
from kit.engine.data.batches import collate  # noqa: E402
from kit.engine.data.tokens import IGNORE_INDEX  # noqa: E402
from kit.engine.train import TrainConfig, answer_loss, prepare_model  # noqa: E402
from kit.machine.device import profile  # noqa: E402
from kit.machine.models import load_model  # noqa: E402


def step_seconds(model, batch, loss_of) -> tuple[float, float]:
    """One forward and backward; -> (seconds, loss)."""
    t0 = time.perf_counter()
    loss = loss_of(model, batch)
    loss.backward()
    seconds = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return seconds, loss.item()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", nargs="+", default=["full", "lora", "qlora"])
    ap.add_argument("--json", help="also write the rows (and the machine) to this JSON file")
    args = ap.parse_args()
    if args.batches < 2:
        ap.error("--batches must be >= 2 (the first batch is a warm-up and is not timed)")
    data = make_task("dates", n_train=args.batches * args.batch_size, n_val=0, n_test=0, seed=0)
    ways = {"model(**batch).loss": lambda m, b: m(**b).loss, "answer_loss": answer_loss}
    rows = []
    for method in args.methods:
        model, tok = load_model(args.model, quantization=quantization(method))
        model = prepare_model(model, method, TrainConfig(lora_dropout=0.0))
        model.train()
        examples = list(tokenize(data["train"], tok))
        batches = [collate(examples[i:i + args.batch_size], pad_token_id(tok))
                   for i in range(0, len(examples), args.batch_size)]
        scored = statistics.fmean(float((b["labels"][:, 1:] != IGNORE_INDEX).any(0).float().mean()) for b in batches)
        times = {way: [] for way in ways}
        rel_diff = 0.0
        for i, batch in enumerate(batches):           # the two ways alternate on each batch
            losses = {}
            for way, loss_of in ways.items():
                seconds, losses[way] = step_seconds(model, batch, loss_of)
                if i:                                 # batch 0 is a warm-up
                    times[way].append(seconds)
            full, answer = losses.values()
            rel_diff = max(rel_diff, abs(answer - full) / abs(full))
        row = {"method": method, "scored_positions": scored, "max_rel_diff": rel_diff,
               **{f"{way}_s": statistics.median(t) for way, t in times.items()}}
        row["ratio"] = row["answer_loss_s"] / row["model(**batch).loss_s"]
        rows.append(row)
        print(f"{method:6s} positions scored {scored:5.1%}  model(**batch).loss {row['model(**batch).loss_s']:.2f} s"
              f"  answer_loss {row['answer_loss_s']:.2f} s  ratio {row['ratio']:.2f}"
              f"  loss rel. diff {rel_diff:.1e}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": "python benchmarks/bench_answer_loss.py " + " ".join(sys.argv[1:]),
            "device": profile().as_dict(), "model": args.model, "batch_size": args.batch_size,
            "recorded_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
