"""The study's runs (kit.study) read into what lesson 06 concludes from: per method the chosen
learning rate with its range, the headline metrics with intervals, forgetting at matched
learning, the learning-forgetting frontier, QLoRA's forgetting taken apart, LoftQ against plain
QLoRA; and every comparison with the smallest difference the design could detect.

Every interval is a 95% percentile bootstrap (kit.scratch.stats): over seeds and items (test items for
answer NLL and exact match, general prompts for the KL) when a run has per-item values, over
seeds otherwise. Percentile intervals stay inside what the quantity can be (a KL >= 0, a share
in [0, 1]). A verdict is "different" when the interval of a difference excludes 0; otherwise
"could not detect", with the smallest difference the design finds 4 times in 5.
"""
from __future__ import annotations

import math
import statistics

from kit.scratch import stats
from kit.study.design import choose

ARMS = ("full", "lora", "qlora", "qlora-loftq")
METRICS = {   # name: (what it is, unit, lower is better)
    "answer_nll": ("answer NLL on the test items (nats per answer token)", "nats", True),
    "exact_match": ("exact match on the test items", "share", False),
    "kl_best_step": ("forgetting KL from the fp32 base on the general prompts, at the best step", "nats", True),
    "kl_at_matched": ("forgetting KL at the matched validation loss", "nats", True),
    "kl_step0": ("KL from the fp32 base before training (step 0)", "nats", True),
}
PAIRS = (("full", "lora"), ("full", "qlora"), ("lora", "qlora"), ("qlora", "qlora-loftq"))


def arm(run: dict) -> str:
    return run["method"] + ("-" + run["init"] if run.get("init", "plain") != "plain" else "")


# ---------------------------------------------------------------------------- per-item values
def _per_item(run: dict, metric: str, matched: float | None) -> list[float] | None:
    m = run["measured"]
    if metric == "answer_nll":
        return m["answer_nll"]
    if metric == "exact_match":
        return [float(x) for x in m["exact"]]
    if metric == "kl_best_step":
        return m["kl"]["fp32"]["per_item_kl"]
    if metric == "kl_step0":
        return run["history"][0]["per_item_kl"]
    if metric == "kl_at_matched":
        return kl_at(run, matched)
    raise ValueError(f"metric must be one of {list(METRICS)}; got {metric!r}.")


def kl_at(run: dict, target: float) -> list[float] | None:
    """Per-prompt KL where the run's validation loss first reaches `target`, interpolated
    linearly in validation loss between the two evaluations around it; None if it never does."""
    hist = run["history"]
    for i, e in enumerate(hist):
        if e["val_loss"] <= target:
            if i == 0:
                return list(e["per_item_kl"])
            prev = hist[i - 1]
            w = (prev["val_loss"] - target) / (prev["val_loss"] - e["val_loss"])
            return [(1 - w) * a + w * b for a, b in zip(prev["per_item_kl"], e["per_item_kl"])]
    return None


def matched_target(runs_by_arm: dict) -> float:
    """The common validation loss every chosen-rate run reaches: the highest of their best
    validation losses (so no run is extrapolated)."""
    return max(r["best_val"] for runs in runs_by_arm.values() for r in runs if r["best_val"] is not None)


# ---------------------------------------------------------------------------- the rate choice
def rate_choice(sweep: dict, seeds: list[dict]) -> dict:
    """Where the chosen rate's neighbours fall against its own seed spread, and the range of rates
    whose seed-0 run is inside the 95% prediction interval of one more seed at the chosen rate
    (mean + t * sd * sqrt(1 + 1/n)): rates the design cannot tell from the chosen one."""
    vals = [r["best_val"] for r in seeds]
    mean, sd, n = statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)
    limit = mean + (stats.t_quantile(n - 1) * sd * math.sqrt(1 + 1 / n) if n > 1 else 0.0)
    rates = sorted(sweep)
    inside = [lr for lr in rates if sweep[lr]["best_val"] is not None and sweep[lr]["best_val"] <= limit]
    return {"mean": mean, "sd": sd, "n": n, "limit": limit,
            "neighbours": [{"lr": lr, "best_val": sweep[lr]["best_val"],
                            "sds_above": (sweep[lr]["best_val"] - mean) / sd if sd and sweep[lr]["best_val"] is not None else None}
                           for lr in rates],
            "range": [min(inside), max(inside)] if inside else None,
            "at_edge": bool(inside) and (min(inside) == rates[0] or max(inside) == rates[-1])}


# ---------------------------------------------------------------------------- frontier
def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The least forgetting reached at each validation loss: the points (val_loss, kl) that no
    other point beats on both, in order of validation loss."""
    out, best = [], math.inf
    for val, kl in sorted(points):
        if kl < best:
            out.append((val, kl))
            best = kl
    return out


# ---------------------------------------------------------------------------- the summary
def _interval(runs: list[dict], metric: str, matched: float | None) -> dict | None:
    values = [_per_item(r, metric, matched) for r in runs]
    if not values or any(v is None for v in values):
        return None
    return stats.seeds_and_items_mean(values)


def compare(a_runs, b_runs, metric, matched) -> dict | None:
    """Arm a against arm b on `metric`, paired over items and seeds (a bootstrap of both): the
    difference with its 95% interval, the smallest difference the design detects, the verdict.
    None when a run lacks the metric (a run that never reached the matched validation loss)."""
    a = [_per_item(r, metric, matched) for r in a_runs]
    b = [_per_item(r, metric, matched) for r in b_runs]
    if not a or not b or any(v is None for v in a + b):
        return None
    out = stats.seeds_and_items_bootstrap(a, b)
    if out["se"] == 0:                     # every replicate the same: nothing varies to compare
        out["verdict"] = "no difference (the same on every item and seed)" if out["diff"] == 0 else "different"
    else:
        out["verdict"] = ("different" if out["verdict"] == "different"
                          else f"could not detect (smallest detectable: {out['detectable']:.3g})")
    return out


def summarize(settings: dict, runs: list[dict], base: dict) -> dict:
    """-> the study's summary (study.json): settings, base, methods, matched, frontier,
    qlora_decomposition, comparisons, lr_ratio, lora_conventions."""
    by_arm: dict[str, list[dict]] = {}
    for r in runs:
        by_arm.setdefault(arm(r), []).append(r)
    methods, chosen_runs = {}, {}
    for name, rs in by_arm.items():
        if name in settings["methods"]:
            methods[name], chosen_runs[name] = _method(rs)
    if "qlora-loftq" in by_arm:
        chosen_runs["qlora-loftq"] = sorted(by_arm["qlora-loftq"], key=lambda r: r["seed"])
    target = matched_target(chosen_runs)
    arms = {name: _arm(name, rs, target) for name, rs in chosen_runs.items()}
    fronts = {name: frontier([(e["val_loss"], e["kl"]) for r in by_arm[name] for e in r["history"]
                              if math.isfinite(e["val_loss"])]) for name in methods}
    return {"settings": settings,
            "base": {k: {"val_loss": v["val_loss"], "accuracy": v["accuracy"], "mean_nll": v["mean_nll"],
                         "capitals": v["capitals"], "kl": v["kl"]["fp32"]["kl"],
                         # on the prompts the runs' evaluations score: the base's point in their plane
                         "kl_eval": statistics.fmean(v["kl"]["fp32"]["per_item_kl"][:settings.get("n_general_eval")])}
                     for k, v in base.items()},
            "methods": methods, "arms": arms, "matched_val_loss": target, "frontier": fronts,
            "qlora_decomposition": _decomposition(arms, base["nf4"]),
            "comparisons": _comparisons(chosen_runs, target), "lr_ratio": _lr_ratio(methods),
            "detectable_se": stats.DETECTABLE_SE,
            "lora_conventions": {"r": settings["lora_r"], "alpha": settings["lora_alpha"],
                                 "scaling": settings["lora_alpha"] / settings["lora_r"],
                                 "dropout": settings["lora_dropout"], "targets": "all-linear"}}


def _method(rs: list[dict]) -> tuple[dict, list[dict]]:
    """One method's sweep, its chosen rate (kit.study.design.choose) with the rate's range, and
    the chosen rate's runs, by seed."""
    sweep = {r["lr"]: r for r in rs if r["seed"] == 0}
    chosen = choose(sweep)
    seeds = sorted((r for r in rs if r["lr"] == chosen), key=lambda r: r["seed"])
    return {"rates": sorted(sweep), "chosen_lr": chosen,
            "sweep": [{k: sweep[lr][k] for k in ("lr", "best_val", "best_step", "stop", "steps")} for lr in sorted(sweep)],
            "rate_choice": rate_choice(sweep, seeds)}, seeds


def _arm(name: str, rs: list[dict], target) -> dict:
    """An arm's runs at its rate: each run's record, how many stopped on a plateau, and every
    metric with its interval over seeds and items."""
    out = {"lr": rs[0]["lr"], "seeds": len(rs),
           "runs": [{"seed": r["seed"], "stop": r["stop"], "steps": r["steps"], "best_step": r["best_step"],
                     "best_val": r["best_val"], "accuracy": r["measured"]["accuracy"],
                     "mean_nll": r["measured"]["mean_nll"], "kl": r["measured"]["kl"]["fp32"]["kl"],
                     "kl_own": r["measured"]["kl"].get("nf4", {}).get("kl"),
                     "capitals": r["measured"]["capitals"], "median_step_s": r["median_step_s"],
                     "seconds": r["seconds"]} for r in rs],
           "plateaued": sum(r["stop"] == "plateau" for r in rs),
           "best_step_interior": sum(r["best_step"] is not None and 0 < r["best_step"] < r["steps"] for r in rs),
           "capitals": stats.bootstrap_mean([r["measured"]["capitals"] for r in rs]),
           "step_s": statistics.median(r["median_step_s"] for r in rs),
           "curves": [{"seed": r["seed"], "history": [{k: e[k] for k in e if k != "per_item_kl"} for e in r["history"]]}
                      for r in rs]}
    for metric in METRICS:
        out[metric] = _interval(rs, metric, target)
    if "nf4" in rs[0]["measured"]["kl"]:          # a 4-bit base: forgetting from it too
        out["kl_own_base"] = stats.seeds_and_items_mean([r["measured"]["kl"]["nf4"]["per_item_kl"] for r in rs])
    return out


def _comparisons(chosen_runs: dict, target) -> list[dict]:
    out = []
    for a, b in PAIRS:
        if a in chosen_runs and b in chosen_runs:
            for metric in METRICS:
                if metric == "kl_step0" and "loftq" not in b:
                    continue
                c = compare(chosen_runs[a], chosen_runs[b], metric, target)
                if c is not None:
                    out.append({"metric": metric, "a": a, "b": b, **c})
    return out


def _decomposition(arms: dict, nf4: dict) -> dict | None:
    """QLoRA's forgetting in parts: base -> 4-bit base (loading), 4-bit base -> tuned, base -> tuned."""
    if "qlora" not in arms:
        return None
    q = arms["qlora"]
    loading = stats.bootstrap_mean(nf4["kl"]["fp32"]["per_item_kl"])
    return {"base_to_4bit": loading, "4bit_to_tuned": q["kl_own_base"], "base_to_tuned": q["kl_best_step"],
            "sum_of_parts": loading["mean"] + q["kl_own_base"]["mean"]}


def _lr_ratio(methods: dict) -> dict | None:
    """LoRA's chosen rate over full fine-tuning's, with the range the rates' own ranges allow."""
    if not {"lora", "full"} <= set(methods):
        return None
    lrs = {m: methods[m]["chosen_lr"] for m in ("lora", "full")}
    lo_l, hi_l = methods["lora"]["rate_choice"]["range"] or [lrs["lora"]] * 2
    lo_f, hi_f = methods["full"]["rate_choice"]["range"] or [lrs["full"]] * 2
    return {"lora/full": lrs["lora"] / lrs["full"], "low": lo_l / hi_f, "high": hi_l / lo_f}


# ---------------------------------------------------------------------------- markdown
def _fmt(x, metric: str) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if METRICS.get(metric, ("", ""))[1] == "share" else f"{x:.4f}"


def _with_interval(d: dict | None, metric: str) -> str:
    if not d:
        return "-"
    return f"{_fmt(d['mean'], metric)} [{_fmt(d['low'], metric)}, {_fmt(d['high'], metric)}]"


def report(summary: dict) -> str:
    """The study in a few markdown tables (95% intervals; verdicts with the detectable difference)."""
    s = summary["settings"]
    lines = [f"# Study: {s['model']}, task {s['task']}, up to {s['max_steps']} steps of {s['batch_size']} "
             f"(early stopping: patience {s['patience']}, threshold {s['threshold']}), "
             f"LoRA r={s['lora_r']} alpha={s['lora_alpha']} dropout={s['lora_dropout']}",
             f"{summary.get('hardware', '')}; {summary.get('recorded_at', '')}", "",
             "| method | rates swept | chosen rate | rates within the seed spread | plateau / seeds | best steps |",
             "|---|---|---|---|---|---|"]
    for m, info in summary["methods"].items():
        a, rc = summary["arms"][m], info["rate_choice"]
        rng = f"{rc['range'][0]:.3g} to {rc['range'][1]:.3g}" if rc["range"] else "-"
        lines.append(f"| {m} | {', '.join(f'{r:.3g}' for r in info['rates'])} | {info['chosen_lr']:.3g} | {rng} "
                     f"| {a['plateaued']} / {a['seeds']} | {', '.join(str(r['best_step']) for r in a['runs'])} |")
    lines += ["", "| arm | seeds | " + " | ".join(METRICS[k][0] for k in METRICS) + " | capitals |",
              "|---|---|" + "---|" * (len(METRICS) + 1)]
    for name, a in summary["arms"].items():
        lines.append(f"| {name} (lr {a['lr']:.3g}) | {a['seeds']} | "
                     + " | ".join(_with_interval(a[k], k) for k in METRICS)
                     + f" | {_with_interval(a['capitals'], 'exact_match')} |")
    b = summary["base"]
    lines += ["", f"Bases before training: fp32 validation loss {b['fp32']['val_loss']:.4f}, exact match "
                  f"{_fmt(b['fp32']['accuracy'], 'exact_match')}; 4-bit NF4 {b['nf4']['val_loss']:.4f}, "
                  f"{_fmt(b['nf4']['accuracy'], 'exact_match')}, KL {b['nf4']['kl']:.4f} from the fp32 base.",
              f"Matched validation loss (the highest best validation loss of the chosen-rate runs): "
              f"{summary['matched_val_loss']:.4f}.", "",
              "| metric | a | b | a - b [95%] | verdict |", "|---|---|---|---|---|"]
    for c in summary["comparisons"]:
        lines.append(f"| {c['metric']} | {c['a']} | {c['b']} | {c['diff']:+.4g} [{c['low']:+.4g}, {c['high']:+.4g}] "
                     f"| {c['verdict']} |")
    d = summary.get("qlora_decomposition")
    if d:
        lines += ["", f"QLoRA's forgetting: KL(base || 4-bit base) {_with_interval(d['base_to_4bit'], 'kl')}, "
                      f"KL(4-bit base || tuned) {_with_interval(d['4bit_to_tuned'], 'kl')}, "
                      f"KL(base || tuned) {_with_interval(d['base_to_tuned'], 'kl')}; the first two add to "
                      f"{d['sum_of_parts']:.4f} (KL is not a distance: the parts need not add up)."]
    if summary.get("lr_ratio"):
        r = summary["lr_ratio"]
        lines += ["", f"LoRA's chosen rate / full fine-tuning's: {r['lora/full']:.3g} "
                      f"(rates within the seed spread: {r['low']:.3g} to {r['high']:.3g})"]
    return "\n".join(lines) + "\n"
