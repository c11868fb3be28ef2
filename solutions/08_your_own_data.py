"""Solutions to notebook 08's exercises (each takes the notebook's variables)."""
from kit.engine.train import PARITY_TOLERANCE


def ex1(ns):
    # the tokens marked [[...]]: every assistant turn's text and its end-of-turn token
    return ns["mask"]["loss_tokens"]


def ex2(ns):
    return ns["padding"]["random"]["padding"]


def ex3(ns):
    return max(p["max_rel_diff"] for p in ns["parity"].values()) < PARITY_TOLERANCE
