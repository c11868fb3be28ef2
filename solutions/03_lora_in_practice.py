"""Solutions to notebook 03's exercises: each takes the notebook's variables and returns the
answer the exercise asks for. Try the exercise first; the notebook's check says what is right."""


def ex1(ns):
    # the lower validation loss after the same budget
    runs = ns["facts"].get("runs")
    return min(runs, key=lambda label: runs[label]["val_loss"]) if runs else None


def ex2(ns):
    # a wider gap between the best and the worst rank later on means rank matters more
    spread = ns["facts"].get("spread")
    return ("more" if spread[-1] > spread[0] else "less") if spread else None


def ex3(ns):
    # the combination whose update differs from the average update by float rounding only
    combos = ns["facts"].get("combos")
    return min(combos, key=lambda kind: combos[kind]["delta_max_abs_diff"]) if combos else None


def ex4(ns):
    # lower rate minus LR, for retention and for exact match
    facts = ns["facts"]
    if not facts:
        return None
    low, high = facts["at_low_lr"], facts["at_lr"]
    return (low["retention"] - high["retention"], low["accuracy"] - high["accuracy"])
