"""The study's variants arm: `python -m kit study --arm variants`.

LoRA as the study trains it (r = 8, alpha = 16, all linear layers) against peft's variants and
against other targets at the same number of trainable parameters, each on the study's task and
data:

  variants (the rate tuned for each: a sweep at seed 0, then `seeds` seeds at its best rate)
    lora      the study's LoRA
    dora      use_dora: a magnitude per output and a direction, the update on the direction
    rslora    use_rslora: scaling alpha / sqrt(r) instead of alpha / r
    loraplus  loraplus_lr_ratio 16: lora_B at 16 x the rate (peft's create_loraplus_optimizer)
    pissa     A and B from the weight's top-r singular vectors, the weight minus them frozen
              (peft's init_lora_weights="pissa")
  targets (at LoRA's chosen rate, `seeds` seeds; the rank matched to all-linear's count at r = 8)
    attention q, k, v and o only
    mlp       gate, up and down only

The arm has a budget of its own (about an hour on 2 cores), so every run trains a fixed
`max_steps` (no early stopping) and keeps its best evaluation; the main study trains to a
plateau. Each run records its validation history, the median time of a step, and at its best
step the answer NLL of each of `n_test` test items, the metric of the comparisons (paired over
items and seeds, kit.study.report). Resumable: each finished run is a file in <out>/runs/.
"""
from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kit.arch import linear_shapes, resolve_arch
from kit.engine.data import make_task, pad_token_id, tokenize
from kit.engine.evaluate import answer_scores
from kit.engine.train import TrainConfig, best_evaluation, finetune, prepare_model
from kit.files import RUNS, write_json
from kit.machine.device import hardware, library_versions
from kit.machine.models import load_model
from kit.scratch import stats
from kit.scratch.lora import trainable_parameters
from kit.study.design import choose
from kit.study.records import clock, commit, jsonable, open_folder, read_record, restore, snapshot
from kit.study.report import compare

VARIANTS = {"lora": {}, "dora": {"use_dora": True}, "rslora": {"use_rslora": True},
            "loraplus": {"loraplus_lr_ratio": 16.0}, "pissa": {}}
TARGETS = {"attention": ["q_proj", "k_proj", "v_proj", "o_proj"], "mlp": ["gate_proj", "up_proj", "down_proj"]}


@dataclass
class VariantsConfig:
    model: str = "smollm2-135m"
    task: str = "dates"              # the main study's task and data (data_seed)
    n_train: int = 1200
    n_val: int = 64
    n_test: int = 128                # items scored at the best step (the main study: 512)
    max_steps: int = 24              # a fixed budget: 192 examples
    batch_size: int = 8
    warmup_steps: int = 4
    schedule: str = "constant_with_warmup"
    eval_steps: int = 12             # the best of steps 0, 12 and 24
    lora_r: int = 8
    lora_alpha: float = 16
    rates: dict = field(default_factory=lambda: {
        "lora": [3.16e-4, 1e-3, 3.16e-3], "dora": [3.16e-4, 1e-3, 3.16e-3],
        "rslora": [1e-4, 3.16e-4, 1e-3],          # its scaling is sqrt(r) = 2.8 x LoRA's at r = 8
        "loraplus": [1e-4, 3.16e-4, 1e-3],        # B at 16 x: its paper lowers the rate
        "pissa": [1e-4, 3.16e-4, 1e-3]})          # A and B start large (the top singular values)
    seeds: int = 3
    targets: tuple = tuple(TARGETS)
    data_seed: int = 0


QUICK = VariantsConfig(model="tiny-llama", n_train=48, n_val=8, n_test=8, max_steps=4, batch_size=4,
                       warmup_steps=1, eval_steps=2, seeds=2, rates={k: [1e-2, 1e-1] for k in VARIANTS})


def matched_rank(arch, targets: list[str], r: int) -> int:
    """The rank at which LoRA on `targets` trains as many parameters as on all linear layers at r
    (rounded to the nearest whole rank): r x sum(in + out) over all / over the targets.
    arch: a name from kit.arch.ARCHS or a transformers config."""
    shapes = linear_shapes(resolve_arch(arch))
    per_rank = {name: (i + o) * copies for name, (i, o, copies) in shapes.items()}
    return max(1, round(r * sum(per_rank.values()) / sum(per_rank[t] for t in targets)))


def _knobs(cfg: VariantsConfig, arm: str, arch) -> dict:
    if arm in TARGETS:
        r = matched_rank(arch, TARGETS[arm], cfg.lora_r)
        return {"lora_target_modules": TARGETS[arm], "lora_r": r, "lora_alpha": cfg.lora_alpha * r / cfg.lora_r}
    return dict(VARIANTS[arm])


def train_one(cfg: VariantsConfig, ctx: dict, arm: str, lr: float, seed: int, keep: bool = False) -> dict:
    """One run of `arm` at `lr`: -> its record (history, best step, answer NLL per test item).
    keep: a sweep run, scored only if its rate is chosen: its model at the best step waits in
    ctx["kept"] (`_score_kept`), its record says "measured": None until then."""
    model, _ = load_model(cfg.model)
    knobs = _knobs(cfg, arm, model.config)
    config = TrainConfig(max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size, learning_rate=lr,
                         warmup_steps=cfg.warmup_steps, lr_scheduler_type=cfg.schedule, eval_steps=cfg.eval_steps,
                         seed=seed, disable_tqdm=True, lora_dropout=0.0,
                         **({"lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha} | knobs))
    torch.manual_seed(seed)
    if arm == "pissa":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                 target_modules="all-linear", init_lora_weights="pissa",
                                                 task_type="CAUSAL_LM"))
    else:
        model = prepare_model(model, "lora", config)
    best = {"val": math.inf, "step": None, "state": None}
    trajectory = []

    def at_eval(step, val_loss, m):
        trajectory.append({"step": step, "val_loss": val_loss})
        if best_evaluation([e["val_loss"] for e in trajectory]) == len(trajectory) - 1:
            best.update(val=val_loss, step=step, state=snapshot(m))

    t0 = time.perf_counter()
    result = finetune(model, ctx["tokenizer"], ctx["data"], "lora", config, on_eval=at_eval)
    seconds = time.perf_counter() - t0
    restore(result.model, best["state"])
    record = {"arm": arm, "lr": lr, "seed": seed, "knobs": knobs, "seconds": seconds,
              "median_step_s": result.history.median_step_s(),
              "trainable": trainable_parameters(result.model),
              "history": trajectory, "best_step": best["step"],
              "best_val": best["val"] if math.isfinite(best["val"]) else None, "measured": None}
    if keep:
        ctx.setdefault("kept", {})[(arm, lr, seed)] = result.model
        return record
    return record | {"measured": _scores(result.model, ctx)}


def _scores(model, ctx: dict) -> dict:
    scores = answer_scores(model, ctx["test"], ctx["pad_id"])
    return {"answer_nll": scores["nll"], "mean_nll": scores["mean_nll"], "accuracy": scores["accuracy"]}


def plan(cfg: VariantsConfig) -> int:
    return sum(len(r) + cfg.seeds - 1 for r in cfg.rates.values()) + len(cfg.targets) * cfg.seeds


def run(cfg: VariantsConfig | None = None, out=RUNS / "study-variants") -> dict:
    """Run (or resume) the variants arm into `out`; returns the summary (also <out>/variants.json)."""
    cfg = cfg or VariantsConfig()
    out = Path(out)
    started = open_folder(out, cfg, "variants arm")
    _, tokenizer = load_model(cfg.model)
    data = make_task(cfg.task, n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test, seed=cfg.data_seed)
    ctx = {"tokenizer": tokenizer, "data": data, "test": tokenize(data["test"], tokenizer),
           "pad_id": pad_token_id(tokenizer)}
    bar = tqdm(total=plan(cfg), desc="variants runs", unit="run", file=sys.stderr, smoothing=0)
    ctx |= {"out": out, "started": started, "bar": bar}
    runs, chosen = [], {}
    for arm, rates in cfg.rates.items():
        sweep = {lr: _run_or_read(cfg, ctx, arm, lr, 0, keep=True) for lr in sorted(rates)}
        chosen[arm] = choose(sweep)
        sweep[chosen[arm]] = _score_kept(cfg, ctx, sweep[chosen[arm]])
        runs += list(sweep.values()) + [_run_or_read(cfg, ctx, arm, chosen[arm], s) for s in range(1, cfg.seeds)]
    for arm in cfg.targets:
        runs += [_run_or_read(cfg, ctx, arm, chosen["lora"], s) for s in range(cfg.seeds)]
    bar.close()
    wall = clock(out, started)
    summary = summarize(jsonable(cfg), runs) | {
        "hardware": hardware(), "versions": library_versions(), "recorded_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python -m kit study --arm variants" + (" --quick" if cfg == QUICK else ""), "commit": commit(),
        "wall_s": wall["wall_s"], "calls": wall["calls"]}
    write_json(out / "variants.json", summary)
    return read_record(out / "variants.json")


def _path(ctx: dict, arm: str, lr: float, seed: int) -> Path:
    return ctx["out"] / "runs" / f"{arm}_lr{lr:.3g}_seed{seed}.json"


def _run_or_read(cfg: VariantsConfig, ctx: dict, arm: str, lr: float, seed: int, keep: bool = False) -> dict:
    """A finished run read from its file, or trained (keep: see train_one) and written."""
    path, bar = _path(ctx, arm, lr, seed), ctx["bar"]
    record = read_record(path)
    if record is None:
        bar.set_postfix_str(path.stem)
        record = train_one(cfg, ctx, arm, lr, seed, keep)
        write_json(path, record)
        clock(ctx["out"], ctx["started"])
    else:
        bar.initial += 1                 # read, not trained: not part of the ETA's pace
    bar.update(1)
    return record


def _score_kept(cfg: VariantsConfig, ctx: dict, record: dict) -> dict:
    """The chosen rate's sweep run, scored: its kept model, or (trained by an earlier call, whose
    process ended) trained again. The other kept models are dropped."""
    if record["measured"] is None:
        model = ctx.get("kept", {}).get((record["arm"], record["lr"], record["seed"]))
        record = (record | {"measured": _scores(model, ctx)} if model is not None
                  else train_one(cfg, ctx, record["arm"], record["lr"], record["seed"]))
        write_json(_path(ctx, record["arm"], record["lr"], record["seed"]), record)
        clock(ctx["out"], ctx["started"])
    ctx.pop("kept", None)
    return record


def summarize(settings: dict, runs: list[dict]) -> dict:
    """Per arm: the sweep, the chosen rate, its seeds' answer NLL with a 95% interval over seeds and
    items, the median step time, trainable parameters; each arm against LoRA, paired."""
    by_arm: dict[str, list[dict]] = {}
    for r in runs:
        by_arm.setdefault(r["arm"], []).append(r)
    arms = {}
    for arm, rs in by_arm.items():
        sweep = {r["lr"]: r for r in rs if r["seed"] == 0}
        lr = choose(sweep) if arm in settings["rates"] else rs[0]["lr"]
        seeds = sorted((r for r in rs if r["lr"] == lr), key=lambda r: r["seed"])
        arms[arm] = {"lr": lr, "tuned": arm in settings["rates"], "knobs": seeds[0]["knobs"],
                     "trainable": seeds[0]["trainable"], "seeds": len(seeds),
                     "sweep": [{"lr": x, "best_val": sweep[x]["best_val"], "best_step": sweep[x]["best_step"]}
                               for x in sorted(sweep)],
                     "at_edge": arm in settings["rates"] and len(sweep) > 1 and lr in (min(sweep), max(sweep)),
                     "best_val": [r["best_val"] for r in seeds],
                     "step_s": statistics.median(r["median_step_s"] for r in seeds),
                     "answer_nll": stats.seeds_and_items_mean([r["measured"]["answer_nll"] for r in seeds]),
                     "curves": [{"seed": r["seed"], "history": r["history"]} for r in seeds]}
    comparisons = []
    base = [r for r in by_arm.get("lora", []) if r["lr"] == arms.get("lora", {}).get("lr")]
    for arm, a in arms.items():
        if arm == "lora" or not base:
            continue
        mine = [r for r in by_arm[arm] if r["lr"] == a["lr"]]
        c = compare(base, mine, "answer_nll", None)
        comparisons.append({"metric": "answer_nll", "a": "lora", "b": arm, **c,
                            "step_time_ratio": a["step_s"] / arms["lora"]["step_s"]})
    return {"settings": settings, "arms": arms, "comparisons": comparisons}


def report(summary: dict) -> str:
    """The arm in two markdown tables."""
    s = summary["settings"]
    lines = [f"# Variants: {s['model']}, task {s['task']}, {s['max_steps']} steps of {s['batch_size']}, "
             f"{s['seeds']} seeds, answer NLL on {s['n_test']} test items", "",
             "| arm | knobs | trainable | rate | best validation loss (seeds) | answer NLL [95%] | s / step |",
             "|---|---|---|---|---|---|---|"]
    for name, a in summary["arms"].items():
        nll = a["answer_nll"]
        lines.append(f"| {name} | {a['knobs'] or '-'} | {a['trainable']:,} | {a['lr']:.3g}{' (edge)' if a['at_edge'] else ''} "
                     f"| {', '.join(f'{v:.4f}' for v in a['best_val'])} "
                     f"| {nll['mean']:.4f} [{nll['low']:.4f}, {nll['high']:.4f}] | {a['step_s']:.2f} |")
    lines += ["", "| a | b | a - b, answer NLL [95%] | verdict | b's step time / a's |", "|---|---|---|---|---|"]
    for c in summary["comparisons"]:
        lines.append(f"| {c['a']} | {c['b']} | {c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}] | {c['verdict']} "
                     f"| {c['step_time_ratio']:.2f} |")
    return "\n".join(lines) + "\n"
