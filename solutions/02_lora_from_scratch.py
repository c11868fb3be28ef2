"""Solutions to notebook 02's exercises: each takes the notebook's variables and returns the
answer the exercise asks for. Try the exercise first; the notebook's check says what is right."""


def ex1(ns):
    # B = 0 gives exactly 0 and the two equalities hold at any scaling (rounding only);
    # the update's size is proportional to alpha / r
    if not ns["facts"]:
        return None
    low, high = ns["facts"]["rows"]
    rounding = 1e-3 * high["effect"]
    changed = [k for k in ("b0_diff", "formula_diff", "merge_diff") if max(low[k], high[k]) > rounding]
    return changed + (["effect"] if abs(high["effect"] / low["effect"] - 1) > 0.01 else [])


def ex2(ns):
    # r (in + out) for q_proj and v_proj, in every decoder layer
    attn = ns["base"].model.layers[0].self_attn
    per_layer = sum(m.in_features + m.out_features for m in (attn.q_proj, attn.v_proj))
    return ns["RANK"] * per_layer * ns["n_layers"]


def ex3(ns):
    # the larger top-r share is the more concentrated update; over the run, a share that moves
    # by less than 2 points is the same
    facts = ns["facts"]
    if not facts:
        return None
    change = facts["energy_by_step"][-1] - facts["energy_by_step"][0]
    return ("first" if facts["first"] > facts["last"] else "last",
            "same" if abs(change) < 0.02 else "more" if change > 0 else "less")
