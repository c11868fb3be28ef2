"""Solutions to notebook 01's exercises: each takes the notebook's variables and returns the
answer the exercise asks for. Try the exercise first; the notebook's check says what is right."""
import math


def ex1(ns):
    # turned up = the last validation loss more than 5% above the lowest (the notebook's rule);
    # retention: compare the counts after the run at LR and after the run at 5e-4
    if "ex1_val" not in ns or not ns["facts"]:
        return None
    val = ns["ex1_val"]
    low, high = (ns["ex1"][k]["retention"]["correct"] for k in ("lr", "high_lr"))
    change = "falls" if high < low else "rises" if high > low else "holds"
    return (val[-1] > min(val) * 1.05, change)


def ex2(ns):
    # 16 bytes per parameter (fp32 weights 4 + gradients 4 + Adam's two moments 8); the rest is the
    # estimate's activations, logits and workspace
    states = 16 * ns["params17"]
    return (states / 1e9, (ns["est17"].total - states) / 1e9)


def ex3(ns):
    # the bars that differ between the two ledgers; then activations per example against the
    # largest bar that stays put (Adam's states)
    if not ns["facts"]:
        return None
    small, big = ns["ledger"], ns["ledger_big"]
    changed = [bar for bar in ns["BARS"] if getattr(big, bar) != getattr(small, bar)]
    per_example = small.activations / ns["BATCH"]
    return (changed, math.floor(small.optimizer / per_example) + 1)
