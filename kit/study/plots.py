"""The study's figures (python -m kit study; notebook 06), drawn from its summary (kit.study.report)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

COLORS = {"full": "tab:red", "lora": "tab:blue", "qlora": "tab:green", "qlora-loftq": "tab:olive"}   # as kit.view.plots


def lr_curves(summary: dict, title: str = ""):
    """Lowest validation loss against learning rate per method (the sweep, seed 0); at the chosen
    rate the mean over seeds with bars from the lowest to the highest seed, and the range of rates
    the seed spread cannot tell from it shaded."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for m, info in summary["methods"].items():
        color = COLORS.get(m, "tab:gray")
        rows = [r for r in info["sweep"] if r["best_val"] is not None]
        ax.plot([r["lr"] for r in rows], [r["best_val"] for r in rows], "o-", color=color, alpha=0.8,
                label=f"{m}: chosen {info['chosen_lr']:.2g}")
        if m in summary.get("arms", {}):    # the chosen rate's seeds (a sweep alone has none)
            vals = [r["best_val"] for r in summary["arms"][m]["runs"]]
            mean = float(np.mean(vals))
            ax.errorbar([info["chosen_lr"]], [mean], yerr=[[mean - min(vals)], [max(vals) - mean]], fmt="*",
                        ms=14, color=color, mec="black", capsize=4)
        rng = info.get("rate_choice", {}).get("range")
        if rng and rng[0] < rng[1]:
            ax.axvspan(rng[0], rng[1], color=color, alpha=0.08)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (constant after warm-up)")
    ax.set_ylabel("lowest validation loss of the run")
    ax.legend(fontsize=8)
    ax.set_title(title or "Learning-rate sweeps (star: mean of the seeds, bar: their range)", fontsize=10)
    fig.tight_layout()
    return fig


def plane(summary: dict, title: str = ""):
    """The learning-forgetting plane: every evaluation of every chosen-rate run (thin lines, one
    per seed), each method's frontier over all its runs and rates (thick), the 4-bit base alone
    (a point) and the matched validation loss (dotted)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, a in summary["arms"].items():
        color = COLORS.get(name, "tab:gray")
        for i, c in enumerate(a["curves"]):
            h = c["history"]
            ax.plot([e["val_loss"] for e in h], [e["kl"] for e in h], "-", lw=0.8, alpha=0.5, color=color,
                    label=f"{name} at {a['lr']:.2g} ({a['seeds']} seeds)" if i == 0 else None)
    for m, pts in summary["frontier"].items():
        if pts:
            ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", lw=2.2,
                    color=COLORS.get(m, "tab:gray"))
    nf4 = summary["base"]["nf4"]
    ax.plot([nf4["val_loss"]], [nf4.get("kl_eval", nf4["kl"])], "kD", ms=7, label="4-bit base, untrained")
    ax.axvline(summary["matched_val_loss"], color="k", ls=":", lw=1, label="matched validation loss")
    ax.set_xscale("log")
    ax.set_xlabel("validation loss on the task (learning: lower is better)")
    ax.set_ylabel("KL from the fp32 base, general prompts (forgetting)")
    ax.legend(fontsize=7)
    ax.set_title(title or "Learning against forgetting (thick: each method's frontier over all runs)", fontsize=10)
    fig.tight_layout()
    return fig


def matched(summary: dict, title: str = ""):
    """Forgetting at the matched validation loss and answer NLL at the best step, per arm, with
    95% intervals over seeds and items."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    arms = list(summary["arms"])
    for ax, metric, label in ((axes[0], "kl_at_matched", "KL at the matched validation loss"),
                              (axes[1], "answer_nll", "answer NLL on the test items")):
        for x, name in enumerate(arms):
            d = summary["arms"][name][metric]
            if not d:
                continue
            ax.errorbar([x], [d["mean"]], yerr=[[d["mean"] - d["low"]], [d["high"] - d["mean"]]], fmt="o",
                        color=COLORS.get(name, "tab:gray"), capsize=5)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels(arms, fontsize=8)
        ax.set_ylabel(label, fontsize=9)
    fig.suptitle(title or "At matched learning (bars: 95% over seeds and items)", fontsize=10)
    fig.tight_layout()
    return fig


def loss_bands(summary: dict, title: str = ""):
    """Validation loss against step at each arm's chosen rate: every seed (runs stop at
    different steps on their plateau), and where each stopped."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, a in summary["arms"].items():
        color = COLORS.get(name, "tab:gray")
        for i, c in enumerate(a["curves"]):
            h = c["history"]
            ax.plot([e["step"] for e in h], [e["val_loss"] for e in h], "-", color=color, alpha=0.6, lw=1,
                    label=f"{name} at {a['lr']:.2g}" if i == 0 else None)
            best = min(h, key=lambda e: e["val_loss"])
            ax.plot([best["step"]], [best["val_loss"]], "o", ms=4, color=color)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss (dot: each run's best)")
    ax.legend(fontsize=8)
    ax.set_title(title or "Each chosen-rate run until it stopped", fontsize=10)
    fig.tight_layout()
    return fig


FIGURES = {"study_lr_curves": lr_curves, "study_plane": plane, "study_matched": matched,
           "study_loss_bands": loss_bands}


def save_all(summary: dict, folder) -> dict:
    """Every study figure as PNG in `folder`; -> {name: path}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, draw in FIGURES.items():
        fig = draw(summary)
        paths[name] = folder / f"{name}.png"
        fig.savefig(paths[name], dpi=110, bbox_inches="tight")
        plt.close(fig)
    return paths
