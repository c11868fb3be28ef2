"""Figures of choosing a method (notebook 06): the overview, the seed's table, estimate against
measurement, the GPU calculator.
"""
from __future__ import annotations

import matplotlib.pyplot as plt

from kit.view.plots.training import LEDGER_COLORS, LEDGER_PARTS


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
    """The seed's per-size table against the estimator (notebook 06's seed table rows):
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
    """What kit.machine.memory.gpu_fit returns, drawn: left, the estimate's parts stacked,
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
