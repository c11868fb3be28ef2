"""The checks of notebook 01 (full fine-tuning): ex01_N(answer, **facts) -> bool, printing the verdict."""
from __future__ import annotations

import math

from kit.view.check.common import close, verdict


def _ex01_pair(answer):
    """The two parts of a two-part answer (a tuple, or the list JSON makes of it), else None."""
    return tuple(answer) if isinstance(answer, (list, tuple)) and len(answer) == 2 else None


def _ex01_bool(value):
    if isinstance(value, bool):
        return value
    words = {"true": True, "yes": True, "false": False, "no": False}
    return words.get(value.strip().lower()) if isinstance(value, str) else None


def ex01_1(answer, val_losses: list | None = None, passes: float | None = None, lr: float | None = None,
           high_lr: float | None = None, retention_lr: int | None = None,
           retention_high_lr: int | None = None, retention_total: int | None = None,
           main_turned_up: bool | None = None, main_best_passes: float | None = None) -> bool:
    if not val_losses:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    lowest = min(val_losses)
    turned_up = val_losses[-1] > lowest * 1.05              # the notebook's rule (section 6)
    change = ("falls" if retention_high_lr < retention_lr else
              "rises" if retention_high_lr > retention_lr else "holds")
    pair = _ex01_pair(answer)
    up_ok = pair is not None and _ex01_bool(pair[0]) is turned_up
    change_ok = pair is not None and str(pair[1]).strip().lower() == change
    curve = f"{val_losses[0]:.3f}, lowest {lowest:.3f}, last {val_losses[-1]:.3f}"
    overfitting = (f"it turned up ({curve}) after {passes:.2f} passes over the data." if turned_up else
                   f"it did not turn up ({curve}) in {passes:.2f} passes: every batch was new to the model, so "
                   "there was nothing to memorise and the validation loss followed the training loss. "
                   "Overfitting takes repeats"
                   + (f": section 6's run turned up after {main_best_passes:.1f} passes over its examples."
                      if main_turned_up else "."))
    forgetting = (f"Retention {retention_lr}/{retention_total} at lr {lr:g}, {retention_high_lr}/{retention_total} "
                  f"at {high_lr:g}: it {change}. "
                  + (f"AdamW's steps are about as large as the learning rate, so {high_lr / lr:g} times the rate "
                     f"moves the weights about {high_lr / lr:g} times further from the pretrained ones in the same "
                     "number of steps, and full fine-tuning lets every weight move: general "
                     "knowledge goes first. More data protects against overfitting, not against forgetting."
                     if change == "falls" else
                     "In this short run the larger rate did not cost retention; run EX1_STEPS = STEPS and look again."))
    hint = ("answer as a pair, e.g. (False, \"falls\")." if pair is None else
            "compare the last validation loss with the lowest one (turned up = more than 5% above it)."
            if not up_ok else "compare the two retention counts the cell prints: \"falls\", \"holds\" or \"rises\".")
    return verdict(up_ok and change_ok, f"{overfitting} {forgetting}", hint, answer)


def ex01_2(answer, params: int, total: int, optimizer: int, activations: int, logits: int, workspace: int,
           activation_rows: list | None = None) -> bool:
    states = 16 * params
    hand, extra = states / 1e9, (total - states) / 1e9
    pair = _ex01_pair(answer)
    ok = pair is not None and close(pair[0], hand, rel=0.02) and close(pair[1], extra, rel=0.1, abs_tol=0.01)
    biggest = sorted(activation_rows or [], key=lambda row: -row[1])[:3]
    parts = "; ".join(f"{what} {nbytes / 1e6:,.0f} MB" for what, nbytes in biggest)
    right = (f"16 bytes x {params / 1e9:.2f}B parameters = {hand:.1f} GB; the estimate adds {extra * 1e3:,.0f} MB "
             f"({extra / (total / 1e9):.1%} of {total / 1e9:.1f} GB): activations {activations / 1e6:,.0f} MB "
             f"({parts}), logits {logits / 1e6:,.0f} MB, workspace {workspace / 1e6:,.0f} MB. With gradient "
             "checkpointing the forward pass keeps only each layer's input (the backward pass recomputes the "
             "rest, one layer at a time), and at batch 1 x 512 tokens there are only 512 positions to keep "
             "anything for; the 16 bytes per parameter do not shrink with the batch.")
    return verdict(ok, right, "16 bytes times the parameter count, in GB (1 GB = 1e9 bytes); what the "
                   "estimate adds is its total minus that. Answer as a pair, e.g. (20.0, 2.0).", answer)


def ex01_3(answer, small: dict | None = None, batch: int | None = None, seq_len: int | None = None,
           big: dict | None = None, batch_big: int | None = None, seq_len_big: int | None = None) -> bool:
    if not small or not big:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    changed = {bar for bar in small if abs(big[bar] - small[bar]) > 0.01 * small[bar]}
    fixed = max((bar for bar in small if bar not in changed), key=lambda bar: small[bar])  # Adam's states
    per_example = [small["activations"] / batch, big["activations"] / batch_big * seq_len / seq_len_big]
    crossings = [math.floor(small[fixed] / pe) + 1 for pe in per_example]     # activations > the fixed bar
    pair = _ex01_pair(answer)
    names = None
    if pair is not None:
        names = pair[0].split(",") if isinstance(pair[0], str) else pair[0]
        names = {str(n).strip().lower() for n in names} if isinstance(names, (list, tuple, set)) else None
    bars_ok = names == changed
    try:
        batch_ok = min(crossings) - 1 <= float(pair[1]) <= max(crossings) + 1
    except (TypeError, ValueError):
        batch_ok = False
    already = f"; batch {batch} already does, just" if min(crossings) <= batch else ""
    right = (f"{' and '.join(sorted(changed))} change: activations {small['activations'] / 1e6:,.0f} -> "
             f"{big['activations'] / 1e6:,.0f} MB, logits {small['logits'] / 1e6:,.0f} -> {big['logits'] / 1e6:,.0f} MB, "
             "both proportional to batch x tokens, while the weights, their gradients and Adam's states do not "
             f"depend on the batch. One example of {seq_len} tokens keeps about {per_example[0] / 1e6:,.0f} MB of "
             f"activations, so {min(crossings)} examples outweigh the {fixed} bar, {small[fixed] / 1e6:,.0f} MB{already}.")
    hint = ("answer as a pair, e.g. ([\"weights\"], 100)." if pair is None else
            "compare every row of the two columns: which numbers moved?" if not bars_ok else
            f"activations per example = the activation bar / {batch}; how many examples exceed the largest "
            "bar that does not grow?")
    return verdict(bars_ok and batch_ok, right, hint, answer)
