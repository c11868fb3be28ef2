"""Figures of a training run (notebooks 01-03): the memory ledger, the loss curves, the seed's estimates.
"""
from __future__ import annotations

import matplotlib.pyplot as plt

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
