"""Figures of LoRA (notebooks 02-03): parameters against rank, singular values, truncation, rank sweeps.
"""
from __future__ import annotations

import matplotlib.pyplot as plt

from kit.scratch.lora import energy_share


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
