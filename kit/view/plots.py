"""Plots of what the engine returns (matplotlib only): each function takes plain records
(dicts, lists, Ledger/Estimate.as_dict()) and returns a Figure; notebooks save it with
kit.view.notebook.save_figure. Nothing in the engine imports this module.
"""
from __future__ import annotations


import matplotlib.pyplot as plt
import numpy as np

from kit.scratch.lora import energy_share


# ============================================================================ 01-03: full FT and LoRA
# (notebooks 01_full_finetuning, 02_lora_from_scratch, 03_lora_in_practice)

LEDGER_PARTS = ("weights", "quant_constants", "gradients", "optimizer", "activations", "logits")
LEDGER_COLORS = {"weights": "tab:blue", "quant_constants": "tab:cyan", "gradients": "tab:orange",
                 "optimizer": "tab:red", "activations": "tab:green", "logits": "tab:olive",
                 "workspace": "tab:gray"}


def ledger_bars(ledgers: dict, title: str = ""):
    """Stacked bars of a training step's memory, one bar per entry of `ledgers`
    ({label: Ledger.as_dict() or Estimate.as_dict(), in bytes}); MB on the y axis."""

    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(ledgers), 4))
    parts = [p for p in (*LEDGER_PARTS, "workspace") if any(d.get(p) for d in ledgers.values())]
    bottoms = [0.0] * len(ledgers)
    for part in parts:
        heights = [d.get(part, 0) / 1e6 for d in ledgers.values()]
        ax.bar(list(ledgers), heights, bottom=bottoms, label=part.replace("_", " "),
               color=LEDGER_COLORS[part])
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for i, total in enumerate(bottoms):
        ax.text(i, total, f"{total:,.0f} MB", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("MB")
    ax.set_ylim(0, max(bottoms) * 1.15 if bottoms else 1)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def train_val_loss(history: dict, title: str = "", best_step: int | None = None):
    """Training loss per step and validation loss per evaluation, from History.as_dict()
    ({"steps": [{step, loss}], "evals": [{step, val_loss}]}); marks the lowest validation loss."""

    fig, ax = plt.subplots(figsize=(7, 3.6))
    steps = history.get("steps", [])
    ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], color="tab:blue",
            alpha=0.7, label="training loss (one batch)")
    evals = history.get("evals", [])
    if evals:
        ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-",
                color="tab:red", label="validation loss")
        best = min(evals, key=lambda e: e["val_loss"])
        ax.axvline(best["step"] if best_step is None else best_step, color="tab:red",
                   ls=":", lw=1, label=f"lowest validation loss (step {best['step']})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross entropy (answer tokens)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def loss_curves(curves: dict, title: str = "", ylabel: str = "training loss"):
    """Several loss curves on one plot: {label: [(step, loss), ...]}."""

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for label, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def estimate_vs_seed(estimates: dict, quoted_gb: dict, title: str = ""):
    """Stacked bars of Estimates ({label: Estimate.as_dict()}, bytes) next to plain hatched
    bars of figures quoted elsewhere ({label: GB}); GB on the y axis."""

    fig, ax = plt.subplots(figsize=(2.5 + 1.5 * (len(estimates) + len(quoted_gb)), 4.2))
    labelled = set()
    for label, est in estimates.items():
        bottom = 0.0
        for part in (*LEDGER_PARTS, "workspace"):
            h = est.get(part, 0) / 1e9
            if h:
                ax.bar([label], [h], bottom=[bottom], color=LEDGER_COLORS[part],
                       label=None if part in labelled else part.replace("_", " "))
                labelled.add(part)
                bottom += h
        ax.text(label, bottom, f"{bottom:.0f} GB", ha="center", va="bottom", fontsize=9)
    for label, gb in quoted_gb.items():
        ax.bar([label], [gb], color="lightgray", edgecolor="black", hatch="//")
        ax.text(label, gb, f"{gb:.0f} GB", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("GB")
    ax.tick_params(axis="x", labelsize=8, rotation=20)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def lora_params_vs_rank(counts: dict, total: int, rank: int, title: str = ""):
    """Trainable LoRA parameters against rank, one line per target choice
    ({label: {r: count}}), with the model's own size as a ceiling and a marker at `rank`."""

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for label, by_r in counts.items():
        rs = sorted(by_r)
        line, = ax.plot(rs, [by_r[r] for r in rs], "o-", ms=3, label=label)
        n = lora_count_at(by_r, rank)
        ax.plot([rank], [n], "o", ms=9, color=line.get_color())
        ax.annotate(f"{n:,} ({n / total:.2%})", (rank, n), textcoords="offset points",
                    xytext=(8, -4), fontsize=8)
    ax.axhline(total, color="black", ls="--", lw=1, label=f"the whole model ({total / 1e6:.1f}M)")
    ax.axvline(rank, color="gray", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("rank r")
    ax.set_ylabel("trainable parameters")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or f"LoRA parameters at r = {rank}", fontsize=10)
    fig.tight_layout()
    return fig


def lora_count_at(by_r: dict, r: int) -> int:
    """The count at rank r; LoRA counts are linear in r, so any rank follows from one entry."""
    if r in by_r:
        return by_r[r]
    r0 = min(by_r)
    return by_r[r0] // r0 * r


def singular_values(spectra: dict, rank: int, baseline: dict | None = None, title: str = ""):
    """Left: singular values s_i / s_1 of each matrix ({name: [s1 >= s2 >= ...]}), log scale.
    Right: cumulative energy share of the top i directions, with a marker at `rank`.
    `baseline` ({label: [s...]}, e.g. a random matrix of the same shape) is drawn dashed."""

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for style, group in (("-", spectra), ("--", baseline or {})):
        for name, s in group.items():
            s = [float(v) for v in s]
            idx = range(1, len(s) + 1)
            left.plot(idx, [v / s[0] for v in s], style, lw=1.2 if style == "-" else 1.5,
                      label=name, color="black" if style == "--" else None)
            cum, acc, total = [], 0.0, sum(v * v for v in s)
            for v in s:
                acc += v * v
                cum.append(acc / total)
            right.plot(idx, cum, style, lw=1.2 if style == "-" else 1.5,
                       label=f"{name}: {energy_share(s, rank):.0%}",
                       color="black" if style == "--" else None)
    for ax in (left, right):
        ax.axvline(rank, color="gray", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("index i of the singular value")
    left.set_yscale("log")
    left.set_ylabel("s_i / s_1")
    left.set_title("singular values of the update", fontsize=10)
    right.set_ylabel("share of the energy in the top i")
    right.set_ylim(0, 1.02)
    right.set_title(f"energy kept at r = {rank}", fontsize=10)
    right.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def truncation_loss(rows: list, base_loss: float, full_loss: float, rank: int | None = None,
                    title: str = ""):
    """Validation loss when the update is cut to rank r ([{"r", "val_loss"}]), between the
    base model (no update) and the whole update."""

    fig, ax = plt.subplots(figsize=(7, 3.6))
    rows = sorted(rows, key=lambda x: x["r"])
    ax.plot([x["r"] for x in rows], [x["val_loss"] for x in rows], "o-", color="tab:purple",
            label="base + rank-r cut of the update")
    ax.axhline(base_loss, color="tab:gray", ls="--", label=f"base model ({base_loss:.3f})")
    ax.axhline(full_loss, color="tab:green", ls="--", label=f"whole update ({full_loss:.3f})")
    if rank is not None:
        ax.axvline(rank, color="gray", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rank r of the kept update")
    ax.set_ylabel("validation loss")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def rank_sweep(rows: list, base_accuracy: float | None = None, highlight: int | None = None,
               title: str = ""):
    """Accuracy against trainable parameters for a LoRA rank sweep
    ([{"r", "trainable", "accuracy"}]), each point labelled with its rank."""

    fig, ax = plt.subplots(figsize=(7, 3.8))
    rows = sorted(rows, key=lambda x: x["trainable"])
    ax.plot([x["trainable"] for x in rows], [x["accuracy"] for x in rows], "o-", color="tab:blue")
    for x in rows:
        big = highlight is not None and x["r"] == highlight
        ax.annotate(f"r={x['r']}", (x["trainable"], x["accuracy"]), textcoords="offset points",
                    xytext=(4, 6), fontsize=9 if big else 8, weight="bold" if big else None)
        if big:
            ax.plot([x["trainable"]], [x["accuracy"]], "o", ms=11, mfc="none", color="tab:red")
    if base_accuracy is not None:
        ax.axhline(base_accuracy, color="tab:gray", ls="--", label=f"base model ({base_accuracy:.0%})")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("exact match")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def compare_bars(rows: list, metrics: tuple, label_key: str = "label", highlight: str | None = None,
                 title: str = ""):
    """One panel per metric, one bar per row ([{label_key: ..., metric: value}]); the row
    whose label is `highlight` is drawn in red."""

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.4))
    axes = [axes] if len(metrics) == 1 else list(axes)
    labels = [str(r[label_key]) for r in rows]
    for ax, metric in zip(axes, metrics):
        values = [r[metric] if r[metric] is not None else float("nan") for r in rows]
        colors = ["tab:red" if l == highlight else "tab:blue" for l in labels]
        ax.bar(labels, values, color=colors)
        for i, v in enumerate(values):
            ax.text(i, 0 if v != v else v, "not run" if v != v else f"{v:,.3g}", ha="center",
                    va="bottom", fontsize=8)
        if "accuracy" in metric or "share" in metric:  # shares: a fixed 0..1 axis
            ax.set_ylim(0, 1.08)
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.tick_params(axis="x", labelsize=8, rotation=15)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def file_sizes(sizes: dict, title: str = ""):
    """Bars of file sizes ({label: bytes}) on a log scale, labelled in MB."""

    fig, ax = plt.subplots(figsize=(2 + 1.5 * len(sizes), 3.6))
    labels, mb = list(sizes), [v / 1e6 for v in sizes.values()]
    ax.bar(labels, mb, color=["tab:blue", "tab:orange", "tab:green", "tab:red"][:len(mb)])
    for i, v in enumerate(mb):
        ax.text(i, v, f"{v:,.1f} MB", ha="center", va="bottom", fontsize=9)
    ax.set_yscale("log")
    ax.set_ylabel("MB (log scale)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# ============================================================================ 04-06: quantization, QLoRA, choosing
# (notebooks 04_quantization, 05_qlora, 06_choosing_a_method)

def codebooks_on_histogram(weights, block_scaled, codebooks: dict, title: str = ""):
    """Left: a layer's weights (log counts) with the 15 levels of 4-bit absmax quantization
    over the WHOLE tensor drawn on them: one outlier stretches the grid, most weights share a
    level or two. Right: the same weights divided by their block's absmax (what a blockwise
    quantizer sees, in [-1, 1]) with the levels of each code book ({name: 16 levels}) as ticks."""

    w = np.asarray(weights, dtype=np.float64).ravel()
    s = np.asarray(block_scaled, dtype=np.float64).ravel()
    absmax = np.abs(w).max()
    grid = np.arange(-7, 8) / 7 * absmax                        # per-tensor int4 levels
    near = grid[np.abs(w[:, None] - grid[None, :]).argmin(1)] if w.size <= 2_000_000 else None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    left.hist(w, bins=300, color="tab:gray")
    left.set_yscale("log")
    for g in grid:
        left.axvline(g, color="tab:red", lw=0.8)
    if near is not None:
        share = float((near == 0).mean())
        left.set_title(f"weights and per-tensor int4 levels (red): {share:.0%} round to 0", fontsize=9)
    left.set_xlabel("weight value")
    left.set_ylabel("count (log)")
    counts, _, _ = right.hist(s, bins=200, density=True, color="tab:gray", alpha=0.6)
    top = counts.max()
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    for i, (name, levels) in enumerate(codebooks.items()):
        y = top * (1.08 + 0.12 * i)
        lv = np.asarray(levels, dtype=np.float64)
        right.plot(lv, np.full_like(lv, y), "|", ms=14, mew=2, color=colors[i % len(colors)])
        right.text(1.04, y, name, va="center", fontsize=8, color=colors[i % len(colors)])
    right.set_xlim(-1.1, 1.35)
    right.set_ylim(0, top * (1.2 + 0.12 * len(codebooks)))
    right.set_xlabel("weight / absmax of its block")
    right.set_ylabel("density")
    right.set_title("blockwise-scaled weights and the levels of each code book", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def grouped_bars(rows: list, x_key: str, y_key: str, group_key: str, title: str = "",
                 ylabel: str = "", logy: bool = True, xlabel: str = ""):
    """Bars of rows[y_key], grouped by rows[x_key] (x order as first seen), one colour per
    rows[group_key]. Good for error per block size and kind, or per layer and format."""

    xs = list(dict.fromkeys(str(r[x_key]) for r in rows))
    groups = list(dict.fromkeys(str(r[group_key]) for r in rows))
    width = 0.8 / max(1, len(groups))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(xs) * max(1, len(groups)) * 0.6), 3.8))
    for j, g in enumerate(groups):
        pos, vals = [], []
        for i, x in enumerate(xs):
            for r in rows:
                if str(r[x_key]) == x and str(r[group_key]) == g:
                    pos.append(i + (j - (len(groups) - 1) / 2) * width)
                    vals.append(r[y_key])
        ax.bar(pos, vals, width=width, label=g)
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels(xs, fontsize=8, rotation=15 if len(xs) > 6 else 0)
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel or y_key)
    ax.set_xlabel(xlabel or x_key)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def bits_figure(view: dict, title: str = ""):
    """What k-bit blockwise quantization does, from kit.view.widgets.bits_view(...): left, the
    histogram of the error w_hat - w on one layer; right, the model's weight memory at
    32 bit, 16 bit and k bit (linear layers at k bits + constants, the rest 16-bit)."""

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    err = np.asarray(view["error"], dtype=np.float64)
    lim = max(view["error_range"], 1e-12)
    left.hist(err, bins=np.linspace(-lim, lim, 121), color="tab:blue")
    left.set_yscale("log")
    left.set_xlim(-lim, lim)
    left.set_xlabel("error w_hat - w")
    left.set_ylabel("count (log)")
    left.set_title(f"{view['bits']}-bit blockwise (g = {view['blocksize']}) on {view['layer']}: "
                   f"SQNR {view['sqnr_db']:.1f} dB, {view['bits_per_param']:.3f} bits/param", fontsize=9)
    labels, mb = list(view["memory_mb"]), list(view["memory_mb"].values())
    bars = right.bar(labels, mb, color=["tab:gray", "tab:gray", "tab:blue"][:len(mb)])
    for b, v in zip(bars, mb):
        right.text(b.get_x() + b.get_width() / 2, v, f"{v:,.0f} MB", ha="center", va="bottom", fontsize=8)
    right.set_ylabel("weights (MB)")
    right.set_ylim(0, max(mb) * 1.18)
    right.set_title(f"the model's weights ({view['params'] / 1e6:.1f}M params)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def memory_and_quality(rows: list, label_key: str = "format",
                       memory_keys: tuple = ("weights_mb", "weights_mb_16bit_rest"),
                       quality_key: str = "perplexity", title: str = ""):
    """Two panels per format ([{label_key, *memory_keys, quality_key, "how"}]): weight memory
    (one bar per memory key, side by side) and a quality measure (bars, log scale). Rows whose
    "how" is "fake" (simulated by fake quantization) are hatched."""

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.9))
    labels = [str(r[label_key]) for r in rows]
    hatch = ["//" if r.get("how") == "fake" else "" for r in rows]
    width = 0.8 / len(memory_keys)
    for j, key in enumerate(memory_keys):
        pos = [i + (j - (len(memory_keys) - 1) / 2) * width for i in range(len(rows))]
        vals = [r[key] for r in rows]
        bars = left.bar(pos, vals, width=width, color=["tab:blue", "tab:cyan", "tab:gray"][j % 3],
                        edgecolor="black", label=key.replace("_", " "))
        for b, h, v in zip(bars, hatch, vals):
            b.set_hatch(h)
            left.text(b.get_x() + b.get_width() / 2, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=7)
    left.set_xticks(range(len(rows)))
    left.set_xticklabels(labels, fontsize=8, rotation=15)
    left.set_ylabel("MB")
    left.legend(fontsize=8)
    left.set_title("weight memory", fontsize=9)
    vals = [r[quality_key] for r in rows]
    bars = right.bar(labels, vals, color="tab:orange", edgecolor="black")
    for b, h, v in zip(bars, hatch, vals):
        b.set_hatch(h)
        right.text(b.get_x() + b.get_width() / 2, v, f"{v:,.3g}", ha="center", va="bottom", fontsize=8)
    right.tick_params(axis="x", labelsize=8, rotation=15)
    right.set_yscale("log")
    right.set_ylabel(quality_key.replace("_", " "))
    right.set_title(f"{quality_key} (hatched: simulated by fake quantization)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def overview_figure(rows: list, seed: dict | None = None, title: str = ""):
    """The seed's overview table, measured: one panel per row of it, one bar group per method
    (rows: overview rows + "bytes_per_param"). seed: {method: bytes per parameter it quotes},
    drawn as hatched grey bars next to the measured ones."""

    methods = [r["method"] for r in rows]
    x = list(range(len(rows)))
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.8))
    ax = axes[0]
    ax.bar([i - 0.2 for i in x], [r["bytes_per_param"] for r in rows], 0.4, color="tab:blue",
           label="measured: weights + grads + Adam")
    if seed:
        ax.bar([i + 0.2 for i in x], [seed.get(m, 0) for m in methods], 0.4, color="lightgray",
               edgecolor="black", hatch="//", label="the seed's figure")
    ax.set_ylabel("bytes per parameter")
    ax.set_title("memory per parameter (GB per 1B)", fontsize=9)
    ax.legend(fontsize=7)
    panels = [("trainable_share", "share of parameters trained", True, "{:.2%}"),
              ("step_time_s", "seconds per step", False, "{:.2f}")]
    for ax, (key, label, log, fmt) in zip(axes[1:3], panels):
        vals = [r[key] for r in rows]
        ax.bar(x, vals, color="tab:blue")
        for i, v in enumerate(vals):
            ax.text(i, v, fmt.format(v), ha="center", va="bottom", fontsize=8)
        if log:
            ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
    for ax, key, label in ((axes[3], "accuracy", "exact match"), (axes[4], "retention", "retention")):
        before = [r[f"{key}_before"] for r in rows]
        after = [r[f"{key}_after"] for r in rows]
        ax.bar([i - 0.2 for i in x], before, 0.4, color="tab:gray", label="before")
        ax.bar([i + 0.2 for i in x], after, 0.4, color="tab:green", label="after")
        for i, v in enumerate(after):
            ax.text(i + 0.2, v, f"{v:.0%}", ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, 1.12)
        ax.set_title(f"{label} before / after", fontsize=9)
        ax.legend(fontsize=7)
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(methods)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def seed_table_figure(rows: list, fits_on: dict | None = None, title: str = ""):
    """The seed's per-size table against the estimator (kit.machine.memory.seed_comparison rows):
    a grid of sizes x methods, each cell "seed / ours" in GB, coloured by ours/seed (green
    where it holds within the tolerance, red where it does not, grey without an estimate).
    fits_on: {(size, method): bool} marks cells that fit on the chosen GPU with a frame."""

    sizes = list(dict.fromkeys(r["size"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["size"], r["method"]): r for r in rows}
    fig, ax = plt.subplots(figsize=(1.6 + 1.55 * len(methods), 0.9 + 0.55 * len(sizes)))
    for i, size in enumerate(sizes):
        for j, method in enumerate(methods):
            r = cell.get((size, method))
            if r is None:
                continue
            color = "lightgray" if r["estimate_gb"] is None else ("#c8e6c9" if r["holds"] else "#ffcdd2")
            frame = bool(fits_on and fits_on.get((size, method)))
            ax.add_patch(plt.Rectangle((j, i), 1, 1, facecolor=color, edgecolor="black" if frame else "white",
                                       lw=2.5 if frame else 1))
            ours = "no 2-bit" if r["estimate_gb"] is None else f"{r['estimate_gb']:.0f}"
            ax.text(j + 0.5, i + 0.5, f"{r['seed_gb']:.0f} / {ours}", ha="center", va="center", fontsize=8)
    ax.set_xlim(0, len(methods))
    ax.set_ylim(len(sizes), 0)
    ax.set_xticks([j + 0.5 for j in range(len(methods))])
    ax.set_xticklabels(methods, fontsize=8)
    ax.set_yticks([i + 0.5 for i in range(len(sizes))])
    ax.set_yticklabels(sizes, fontsize=8)
    ax.tick_params(length=0)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(title + "\ncell: seed GB / our estimate GB; green: within tolerance, red: not, "
                 "framed: fits on the GPU", fontsize=9)
    fig.tight_layout()
    return fig


def estimate_vs_measured(rows: dict, title: str = ""):
    """Measured (solid) against estimated (hatched) bytes per component, one panel per method
    ({method: kit.machine.memory.compare(ledger, estimate) rows}), MB on a log scale."""

    fig, axes = plt.subplots(1, len(rows), figsize=(4.6 * len(rows), 3.8), squeeze=False)
    for ax, (method, table) in zip(axes[0], rows.items()):
        table = [r for r in table if r["measured"] or r["estimated"]]   # no empty bars (quant constants)
        comps = [r["component"] for r in table]
        x = list(range(len(comps)))
        ax.bar([i - 0.2 for i in x], [max(r["measured"], 1) / 1e6 for r in table], 0.4,
               color=[LEDGER_COLORS.get(c, "tab:gray") for c in comps], label="measured")
        ax.bar([i + 0.2 for i in x], [max(r["estimated"], 1) / 1e6 for r in table], 0.4,
               color=[LEDGER_COLORS.get(c, "tab:gray") for c in comps], hatch="//", alpha=0.55,
               edgecolor="black", label="estimated")
        for i, r in enumerate(table):
            if r["measured"]:
                ax.text(i, max(r["measured"], r["estimated"]) / 1e6, f"{r['estimated'] / r['measured']:.2f}",
                        ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x)
        ax.set_xticklabels([c.replace("_", " ") for c in comps], rotation=30, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("MB (log)")
        ax.set_title(f"{method} (number: estimate / measured)", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def calculator_figure(calc: dict, title: str = ""):
    """What kit.view.widgets.memory_calculator returns, drawn: left, the estimate's parts stacked,
    with the GPU's usable memory as a line; right, the largest preset each method fits on it."""

    est, s = calc["estimate"], calc["settings"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 3]})
    bottom = 0.0
    for part in (*LEDGER_PARTS, "workspace"):
        h = est.get(part, 0) / 1e9
        if h:
            left.bar([s["model"]], [h], bottom=[bottom], color=LEDGER_COLORS[part], label=part.replace("_", " "))
            bottom += h
    left.axhline(calc["gpu_gb"], color="black", ls="--", lw=1.2, label=f"{s['gpu']}: {calc['gpu_gb']:.0f} GB usable")
    left.text(0, bottom, f"{bottom:.1f} GB", ha="center", va="bottom", fontsize=9)
    left.set_ylim(0, max(bottom, calc["gpu_gb"]) * 1.2)
    left.set_ylabel("GB")
    left.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    verdict = "fits" if calc["fits"] else "does NOT fit"
    left.set_title(f"{s['method']} {s['bits']}-bit, r={s['rank']}, batch {s['batch_size']} x {s['seq_len']}, "
                   f"checkpointing {'on' if s['gradient_checkpointing'] else 'off'}: {verdict}", fontsize=8)
    methods = list(calc["largest"])
    params = [(calc["largest"][m]["params"] or 0) / 1e9 for m in methods]
    bars = right.bar(methods, params, color=["tab:red", "tab:blue", "tab:green"][:len(methods)])
    for b, m, p in zip(bars, methods, params):
        name = calc["largest"][m]["name"] or "nothing"
        right.text(b.get_x() + b.get_width() / 2, p, f"{name}\n{p:.1f}B", ha="center", va="bottom", fontsize=8)
    right.set_ylim(0, max(params + [1]) * 1.3)
    right.set_ylabel("parameters (billions)")
    right.set_title(f"largest preset each method fits on {s['gpu']} (same batch, length, rank)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ============================================================================ 07: scaling out
# (notebook 07_scaling_out; the records come from kit.machine.scaling)

SCALING_COLORS = {"full": "tab:red", "lora": "tab:blue", "qlora": "tab:green"}
SCALING_PARTS = ("weights", "quant_constants", "gradients", "optimizer", "gathered_layer", "bucket_copy",
                 "activations", "logits", "workspace")


def _gpu_lines(ax, gpu_lines: dict) -> None:
    for (name, nbytes), style in zip(gpu_lines.items(), ("--", ":", "-.")):
        ax.axhline(nbytes / 1e9, color="black", ls=style, lw=1, label=f"{name}: {nbytes / 1e9:.0f} GB")


def scaling_bars(rows: list, gpu_lines: dict, title: str = ""):
    """Per-GPU memory (GB, log scale) by number of GPUs: one panel per (strategy, model), one bar
    per method (rows: kit.machine.scaling.table). gpu_lines: {name: usable bytes} drawn as lines."""

    archs = list(dict.fromkeys(r["arch"] for r in rows))
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    counts = sorted({r["gpus"] for r in rows})
    cell = {(r["arch"], r["strategy"], r["method"], r["gpus"]): r["total"] for r in rows}
    fig, axes = plt.subplots(len(strategies), len(archs), figsize=(4.4 * len(archs), 3.2 * len(strategies)),
                             sharey=True, squeeze=False)
    width = 0.8 / len(methods)
    for i, strategy in enumerate(strategies):
        for j, arch in enumerate(archs):
            ax = axes[i][j]
            for k, method in enumerate(methods):
                xs = [c + (k - (len(methods) - 1) / 2) * width for c in range(len(counts))]
                ax.bar(xs, [cell[(arch, strategy, method, n)] / 1e9 for n in counts], width,
                       color=SCALING_COLORS.get(method, "tab:gray"), label=method)
            _gpu_lines(ax, gpu_lines)
            ax.set_yscale("log")
            ax.set_xticks(range(len(counts)))
            ax.set_xticklabels([str(n) for n in counts])
            ax.set_title(f"{arch}, {strategy.upper()}", fontsize=9)
            if i == len(strategies) - 1:
                ax.set_xlabel("GPUs")
            if j == 0:
                ax.set_ylabel("GB per GPU (log)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def per_gpu_breakdown(parts: dict, gpu_lines: dict, title: str = ""):
    """One stacked bar per method of what each GPU holds (parts: {method: kit.machine.scaling.per_gpu
    dict, bytes}), with each GPU's usable memory as a line; GB on a linear axis."""

    colors = {**LEDGER_COLORS, "gathered_layer": "tab:purple", "bucket_copy": "tab:brown"}
    fig, ax = plt.subplots(figsize=(7.5, 4))
    methods = list(parts)
    top = 0.0
    for x, method in enumerate(methods):
        bottom = 0.0
        for part in SCALING_PARTS:
            h = parts[method].get(part, 0) / 1e9
            if h:
                ax.bar([x], [h], bottom=[bottom], color=colors.get(part, "tab:gray"),
                       label=part.replace("_", " "))
                bottom += h
        ax.text(x, bottom, f"{bottom:,.1f} GB", ha="center", va="bottom", fontsize=9)
        top = max(top, bottom)
    _gpu_lines(ax, gpu_lines)
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods)
    ax.set_ylim(0, max([top] + [v / 1e9 for v in gpu_lines.values()]) * 1.18)
    ax.set_ylabel("GB per GPU")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))   # one legend entry per part, however many bars have it
    order = [p.replace("_", " ") for p in SCALING_PARTS if p.replace("_", " ") in unique]
    order = [label for label in unique if label not in order] + order     # GPU lines first
    ax.legend([unique[p] for p in order], order, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
