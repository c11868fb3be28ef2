"""The checks of notebook 02 (LoRA from scratch): ex02_N(answer, **facts) -> bool, printing the verdict."""
from __future__ import annotations

import math

from kit.view.check.common import close, verdict

EX02_1_QUANTITIES = ("b0_diff", "formula_diff", "merge_diff", "effect")


def ex02_1(answer, rows: list | None = None) -> bool:
    if not rows:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    low, high = rows[0], rows[-1]
    rounding = 1e-3 * max(low["effect"], high["effect"])    # float32 rounding, next to the update
    changed = {k for k in ("b0_diff", "formula_diff", "merge_diff") if max(low[k], high[k]) > rounding}
    ratio = high["effect"] / low["effect"]
    if not math.isclose(ratio, 1.0, rel_tol=0.01):
        changed.add("effect")
    given = {answer} if isinstance(answer, str) else set(answer) if answer is not None else None
    if given is not None and not given <= set(EX02_1_QUANTITIES):
        return verdict(False, "", f"name the quantities as the cell does: {list(EX02_1_QUANTITIES)}.", answer)
    return verdict(given == changed,
                   f"only the update's size changes: it grows {ratio:.2f}x as the scaling goes from "
                   f"{low['scaling']:g} to {high['scaling']:g}. With B = 0 the update is 0 at any scaling (0 "
                   "times anything), and the formula and merge equalities hold whatever number stands in "
                   "front of BA. Once training starts, the scaling multiplies the effect of every step on "
                   "B: Adam's steps have a size set by the learning rate, so a 4x alpha acts much like a 4x "
                   "learning rate. That is why the rate is re-tuned when alpha changes, and why the LoRA "
                   "paper keeps alpha fixed while it varies r.",
                   "a quantity changes only if it moves beyond float rounding (here about "
                   f"{rounding:.0e}, a thousandth of the update). Compare the two rows: what is exactly 0 at "
                   "both scalings, what stays at rounding size, and what grows with the scaling?", answer)


def ex02_2(answer, rank: int | None = None, layers: int | None = None, shapes_layer0: dict | None = None,
           trainable: int | None = None) -> bool:
    if trainable is None:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    terms = " + ".join(f"({shape[1]} + {shape[0]})" for shape in shapes_layer0.values())
    return verdict(close(answer, trainable, rel=0.0),
                   f"{trainable:,} = {layers} layers x r {rank} x ({terms}): r (in + out) per adapted layer, "
                   "two layers per decoder layer.",
                   "count r x (in + out) for each adapted layer, two per decoder layer, times the layers; "
                   "v_proj maps 576 to 192 (it is not square).", answer)


def _ex02_3_parts(answer):
    if not isinstance(answer, (list, tuple)) or len(answer) != 2:
        return None
    return [str(a).strip().lower().split()[0] if str(a).strip() else "" for a in answer]


def ex02_3(answer, rank: int | None = None, first: float | None = None, last: float | None = None,
           steps: list | None = None, energy_by_step: list | None = None) -> bool:
    if first is None or not energy_by_step:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    layer = "first" if first > last else "last"
    change = energy_by_step[-1] - energy_by_step[0]
    accepted = {"same"} if abs(change) < 0.03 else set()      # within about 2 points: the same
    accepted |= {"more"} if change >= 0.01 else {"less"} if change <= -0.01 else set()
    longer = "same" if abs(change) < 0.02 else "more" if change > 0 else "less"
    parts = _ex02_3_parts(answer) if answer is not None else None
    if answer is not None and parts is None:
        return verdict(False, "", 'answer with two words, e.g. ("first", "more").', answer)
    wrong = []
    if parts and parts[0] != layer:
        wrong.append(f"compare the mean energies printed for the first and the last layer: the larger "
                     f"share in the top {rank} directions is the more concentrated update.")
    if parts and parts[1] not in accepted:
        wrong.append(f"compare the energy after {steps[0]} steps with the energy after {steps[-1]}: a "
                     "rising share is more low-rank, a falling one less; within about 2 points, the same.")
    why = {"same": "the share barely moves: the low-rank structure is there after a few steps and stays, "
                   "the directions all batches share growing at the pace of the rest",
           "more": "the directions all batches share grow steadily while the rest, one batch's own, add "
                   "up like noise, so the update concentrates as the run goes on",
           "less": "later steps add directions of their own (the model starts to fit single examples), "
                   "so the energy spreads"}[longer]
    return verdict(not wrong,
                   f"the {layer} layer's update is the more concentrated ({first:.0%} in the first layer, "
                   f"{last:.0%} in the last, top {rank} directions). The top {rank} held "
                   f"{energy_by_step[0]:.1%} of the update after {steps[0]} steps and {energy_by_step[-1]:.1%} "
                   f"after {steps[-1]}: {why}. LoRA's bet is on those shared directions.",
                   " ".join(wrong), answer)
