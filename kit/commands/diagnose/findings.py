"""A finding and a report; the checks of a run's history (flat, spiking, validation turning up) and of
memory (the largest parts, the longest sequence the GPU holds).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from kit.arch import GPUS
from kit.commands import recipe as recipes

FLAT = 0.02          # a loss that moved less than 2% from its first steps to its last is flat


SPIKE = 3.0          # a step's loss above 3 x the median of the steps before it is a spike


TURNED_UP = 1.05     # lesson 01's rule: a last validation loss 5% above the lowest is overfitting


@dataclass
class Finding:
    area: str          # labels | adapters | training | memory
    name: str          # a short id, for tests and scripts
    message: str
    fix: str

    def line(self) -> str:
        return f"  [{self.area}] {self.message}\n      fix: {self.fix}"


@dataclass
class Report:
    findings: list = field(default_factory=list)
    notes: list = field(default_factory=list)       # what was measured, fine or not

    def text(self) -> str:
        head = (f"{len(self.findings)} finding(s):" if self.findings else "no finding: nothing here "
                "matches a known fault.")
        return "\n".join([*self.notes, "", head, *(f.line() for f in self.findings)]) + "\n"


# ---------------------------------------------------------------------------- the training curve
def check_history(history: dict) -> list[Finding]:
    """history: kit.engine.train.History.as_dict() (a run folder's history.json)."""
    losses = [s["loss"] for s in history.get("steps", [])]
    found = []
    if any(not math.isfinite(x) for x in losses):
        step = next(i for i, x in enumerate(losses) if not math.isfinite(x)) + 1
        found.append(Finding("training", "loss-not-finite", f"the loss became {losses[step - 1]} at step {step}.",
                             "lower the learning rate; in fp16, keep the gradient scaler (the kit's default)."))
        return found
    if len(losses) >= 8:
        k = max(2, len(losses) // 8)
        first, last = statistics.fmean(losses[:k]), statistics.fmean(losses[-k:])
        if abs(first - last) < FLAT * abs(first):
            found.append(Finding("training", "loss-flat", f"the loss barely moved: {first:.4f} over the first {k} "
                                 f"steps, {last:.4f} over the last {k}.", "raise the learning rate (LoRA "
                                 "needs about 10 times full fine-tuning's), and check the gradients."))
        spikes = [i + 1 for i in range(4, len(losses)) if losses[i] > SPIKE * statistics.median(losses[:i])]
        if spikes:
            found.append(Finding("training", "loss-spikes", f"the loss jumped above {SPIKE:g} x its running median "
                                 f"at step(s) {spikes[:5]}: the rate is too high for this method.",
                                 "lower the learning rate, or add warm-up steps."))
    evals = [e for e in history.get("evals", []) if math.isfinite(e["val_loss"])]
    if len(evals) >= 3:
        best = min(evals, key=lambda e: e["val_loss"])
        if evals[-1]["val_loss"] > TURNED_UP * best["val_loss"]:
            found.append(Finding("training", "validation-rising", f"the validation loss turned up after step "
                                 f"{best['step']} ({best['val_loss']:.4f} -> {evals[-1]['val_loss']:.4f} at step "
                                 f"{evals[-1]['step']}): overfitting.", f"stop near step {best['step']} "
                                 "(early_stopping_patience), or train on more examples."))
    return found


# ---------------------------------------------------------------------------- memory
def check_memory(recipe: dict, gpu: str) -> tuple[list[Finding], list[str]]:
    est = recipes.estimate_for(recipe)
    if est is None:
        return [], ["memory: the estimator does not know this model's architecture"]
    parts = sorted(((k, v) for k, v in est.as_dict().items()
                    if k in ("weights", "quant_constants", "gradients", "optimizer", "activations", "logits",
                             "workspace")), key=lambda kv: -kv[1])
    notes = [f"memory of one step on a GPU, estimated: {est.total / 1e9:.2f} GB; largest parts "
             + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in parts[:3])
             + f" (the logits, batch x length x vocabulary: {est.logits / 1e9:.2f} GB)"]

    def fits(n: int) -> bool:
        return recipes.estimate_for(recipe | {"max_length": n}).total <= GPUS[gpu]

    found = []
    if not fits(1):
        found.append(Finding("memory", "does-not-fit", f"even one token per example does not fit a {gpu}: the "
                             "weights and optimizer state alone are too large.", "use QLoRA, or a larger GPU."))
        return found, notes
    low, high = 1, 2
    while high <= 1 << 17 and fits(high):
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    notes.append(f"memory: on a {gpu} this recipe fits sequences up to about {low:,} tokens (max_length "
                 f"{recipe['max_length']})")
    if recipe["max_length"] > low:
        found.append(Finding("memory", "sequence-too-long", f"max_length {recipe['max_length']} needs more than a "
                             f"{gpu} holds; about {low:,} tokens fit.", "lower max_length or the batch, or turn "
                             "on gradient_checkpointing."))
    return found, notes
