"""Figures of quantization (notebooks 04-05): code books on a weight histogram, bits, memory and quality.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


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
