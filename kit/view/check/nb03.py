"""The checks of notebook 03 (LoRA in practice): ex03_N(answer, **facts) -> bool, printing the verdict."""
from __future__ import annotations

from kit.view.check.common import close, verdict


def _ex03_choice(answer, aliases: dict):
    """The canonical option an answer names ("qv" -> "q_proj,v_proj"), or None."""
    key = str(answer).strip().lower().replace(" ", "")
    return next((option for option, names in aliases.items() if key in names), None)


def ex03_1(answer, runs: dict | None = None) -> bool:
    if not runs:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    best = min(runs, key=lambda label: runs[label]["val_loss"])
    other = next(label for label in runs if label != best)
    given = _ex03_choice(answer, {"all-linear": ("all-linear", "all", "alllinear", "all-linearr=8"),
                                  "q_proj,v_proj": ("q_proj,v_proj", "qv", "q,v", "q_proj,v_projr=64")})
    why = ("every layer, the MLP's included, gets a few directions: more of what the task needs is "
           "reachable than through a high rank in two attention projections (the QLoRA paper found "
           "all layers needed to match full fine-tuning)" if best == "all-linear" else
           "here the rank-64 attention adapters did better; on a short run this can go either way, "
           "and the QLoRA paper found all layers needed at scale")
    return verdict(given == best,
                   f"{best}: validation loss {runs[best]['val_loss']:.3f} against {runs[other]['val_loss']:.3f}, "
                   f"with {runs[best]['trainable']:,} trainable numbers against {runs[other]['trainable']:,}. "
                   f"Roughly the same budget; {why}. One short run each: a gap of a few hundredths may "
                   "be within seed noise.",
                   'compare the two validation losses the cell printed: lower is better. Answer '
                   '"all-linear" or "q_proj,v_proj".', answer)


def ex03_2(answer, steps: list | None = None, spread: list | None = None, ranks: list | None = None) -> bool:
    if not spread:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    if len(ranks) < 2:
        return verdict(False, "", "the sweep needs at least two ranks (SWEEP_RANKS) to compare.", answer)
    expected = "more" if spread[-1] > spread[0] else "less"
    why = ("the larger ranks use their extra directions as training goes on" if expected == "more" else
           "early on the ranks differ in how fast they start (at a fixed alpha a small rank has a "
           "larger scaling, alpha / r); with more steps they converge on what the task needs, which "
           "a few directions hold (lesson 02)")
    given = str(answer).strip().lower().split()[0] if answer is not None and str(answer).strip() else None
    return verdict(given == expected,
                   f"{expected}: the gap between the best and the worst rank's loss was {spread[0]:.3f} at "
                   f"step {steps[0]} and {spread[-1]:.3f} at step {steps[-1]}: {why}. Each is one batch, "
                   "the same for every rank; the lesson's full question (SWEEP_STEPS = 40, SWEEP_BATCH = "
                   "8) may answer differently: try it.",
                   "compare the two 'best to worst' gaps the cell printed: a larger gap later means rank "
                   'matters more. Answer "more" or "less".', answer)


def ex03_3(answer, combos: dict | None = None, delta_size: float | None = None, rank: int | None = None) -> bool:
    if not combos:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    exact = min(combos, key=lambda kind: combos[kind]["delta_max_abs_diff"])
    given = str(answer).strip().strip('"\'').lower() if answer is not None else None
    if given is not None and given not in combos:
        return verdict(False, "", f"name one of the combination types the cell tried: {list(combos)}.", answer)
    text = {"cat": f"stacks the two adapters side by side (rank {combos['cat']['rank']}), so its update is "
                   "the weighted sum of the two updates",
            "linear": "averages the A's and the B's separately, so its product B A carries cross terms "
                      "(B1 A2, B2 A1) and scaling factors the average does not",
            "svd": f"forms the average update and keeps its top {combos['svd']['rank']} directions (peft's "
                   "default): close, not exact"}
    lines = "; ".join(f"'{k}' {text[k]} (difference {combos[k]['delta_max_abs_diff']:.2g})" for k in combos)
    return verdict(given == exact,
                   f"'{exact}', up to rounding (the average update is up to {delta_size:.2g}): {lines}. "
                   "None of them averages the outputs, which runs both adapters: even the exact "
                   f"average update gives logits up to {combos[exact]['logits_vs_output_average']:.2g} away "
                   "from the average of the two outputs, because the model is not linear in its weights.",
                   "read the 'max |delta W - average delta W|' column: the type whose difference is at "
                   "float rounding, far below the size of the update, is exact.", answer)


def ex03_4(answer, at_lr: dict | None = None, at_low_lr: dict | None = None,
           retention_before: float | None = None, full_retention_01: float | None = None) -> bool:
    if not at_lr or not at_low_lr:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    d_ret = at_low_lr["retention"] - at_lr["retention"]
    d_acc = at_low_lr["accuracy"] - at_lr["accuracy"]
    try:
        ok = len(answer) == 2 and close(answer[0], d_ret, rel=0, abs_tol=0.01) and \
            close(answer[1], d_acc, rel=0, abs_tol=0.01)
    except TypeError:
        ok = False
    full = (f" Full fine-tuning in notebook 01 kept {full_retention_01:.0%}, after its own, longer run."
            if full_retention_01 is not None else "")
    reading = ("That is the trade: a lower rate moves the adapters less, so less of the base model's "
               "knowledge is disturbed and less of the task is learned." if d_ret > 0 and d_acc <= 0 else
               "No clean trade here: a lower rate moves the adapters less, which usually keeps more of "
               "the base model's knowledge and learns less of the task, but not on every short run.")
    return verdict(ok,
                   f"retention {100 * d_ret:+.0f} points ({at_lr['retained']} -> {at_low_lr['retained']} of "
                   f"{at_lr['n_probe']} probe questions; {retention_before:.0%} before training), exact match "
                   f"{100 * d_acc:+.0f} points ({at_lr['correct']} -> {at_low_lr['correct']} of "
                   f"{at_lr['n_test']}). {reading} The intervals of {at_lr['n_probe']} and {at_lr['n_test']} "
                   f"items are wide (exact match at lr {at_lr['lr']:g}: {at_lr['interval'][0]:.0%} to "
                   f"{at_lr['interval'][1]:.0%}), so a difference of a few items is within noise; the study "
                   f"measures this trade with more items and seeds.{full}",
                   "two numbers, (retention at the lower rate - retention at LR, exact match at the lower "
                   "rate - exact match at LR), as shares: 3 of 30 more is 0.1.", answer)
