"""Figures of scaling out (notebook 07): memory per GPU under DDP and FSDP.
"""
from __future__ import annotations

import matplotlib.pyplot as plt

from kit.view.plots.training import LEDGER_COLORS

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
