"""The comparison, done right: `python -m kit study` (make study).

Full fine-tuning, LoRA and QLoRA on the same model, task, data and token budget:

  1. a learning-rate sweep per method (seed 0, log-spaced rates); every run's validation loss
     every `eval_steps` steps. A method's rate is the one whose run reached the lowest
     validation loss; if that is an end of the sweep, the sweep is extended on that side, so
     each method's curve is seen to turn up on both sides of its best rate.
  2. at the chosen rate, more seeds (the data order, the adapters' initialisation);
  3. every chosen-rate run is measured twice, at its best-validation step (the trainable
     weights are kept from that step) and at its last step: exact match on `n_test` held-out
     items (with a Wilson interval), forgetting without generation noise (the KL divergence
     from the base model's next-token distribution on the base's own answers to general
     prompts; for QLoRA against the full-precision base and against its own 4-bit base), and
     the capitals probe;
  4. paired tests between the methods on the same test items: exact McNemar per seed, and the
     verdict "different" or "within noise" from a bootstrap that resamples the items (the same
     for both methods) and each method's seeds, so that it holds the noise of training too.

The LoRA conventions are the same for every run and stated in the results: r and alpha fixed
(scaling alpha / r), dropout 0 (full fine-tuning has none either), all linear layers.

Resumable: each finished run is a file in <out>/runs/; the same command skips them. The
results go to <out>/study.json and the figures to <out>/figures/.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import save_file
from tqdm.auto import tqdm

from kit import stats
from kit.arch import METHOD_NAMES
from kit.data import GENERAL_PROMPTS, RETENTION_PROBE, make_task, pad_token_id, tokenize
from kit.device import library_versions, profile
from kit.evaluate import divergence, exact_match, reference_answers, reference_log_probs, retention
from kit.files import read_tensors
from kit.models import load_model
from kit.train import TrainConfig, finetune, prepare_model


@dataclass
class StudyConfig:
    model: str = "smollm2-135m"
    task: str = "extract"          # the harder task: a short run gets it partly right
    n_train: int = 200
    n_val: int = 32                # validation loss every eval_steps: picks the rate and the best step
    n_test: int = 200              # held-out items for exact match (a Wilson interval of +-7 points)
    n_general: int = 100           # general prompts for the forgetting measure (of GENERAL_PROMPTS)
    n_probe: int = 30              # capitals questions (kit.data.RETENTION_PROBE)
    max_steps: int = 20
    batch_size: int = 8            # 20 x 8 = 160 examples: 0.8 of a pass over the training set
    eval_steps: int = 4            # the same cadence for every run: steps 0, 4, ..., 20
    lora_r: int = 8
    lora_alpha: float = 16         # fixed for every run: scaling alpha / r = 2
    lora_dropout: float = 0.0      # as full fine-tuning: no dropout anywhere
    # half-decade steps (x 3.16); a sweep is extended by up to `extend` rates on the side
    # where its best rate sits at the edge
    rates: dict = field(default_factory=lambda: {
        "full": [1e-5, 3.16e-5, 1e-4, 3.16e-4, 1e-3],
        "lora": [1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2],
        "qlora": [1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2]})
    seeds: int = 3
    extend: int = 2
    methods: tuple = METHOD_NAMES
    data_seed: int = 0             # the data are the same for every run


SMOKE = StudyConfig(model="tiny-llama", n_train=16, n_val=4, n_test=8, n_general=6, n_probe=4,
                    max_steps=3, batch_size=2, eval_steps=1, seeds=2, extend=1,
                    rates={"full": [1e-3, 1e-2, 1e-1], "lora": [1e-2, 1e-1, 1.0],
                           "qlora": [1e-2, 1e-1, 1.0]})


# ---------------------------------------------------------------------------- one run
def run_name(method: str, lr: float, seed: int) -> str:
    return f"{method}_lr{lr:.3g}_seed{seed}"


def _config(cfg: StudyConfig, lr: float, seed: int) -> TrainConfig:
    return TrainConfig(max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
                       learning_rate=lr, eval_steps=cfg.eval_steps, seed=seed, disable_tqdm=True,
                       lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout)


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model, state: dict) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])


def train_one(ctx: "Context", method: str, lr: float, seed: int) -> tuple[dict, object, dict]:
    """Train one run; -> (its record, the model at its last step, the trainable weights of
    its best-validation step)."""
    quant = "nf4" if method == "qlora" else None
    model, _ = load_model(ctx.cfg.model, quantization=quant)
    best = {"val": math.inf, "step": None, "state": None}

    def keep_best(step, val_loss, m):
        if val_loss < best["val"]:
            best.update(val=val_loss, step=step, state=_trainable(m))

    t0 = time.perf_counter()
    result = finetune(model, ctx.tokenizer, ctx.data, method, _config(ctx.cfg, lr, seed), on_eval=keep_best)
    hist = result.history
    finite = [e for e in hist.evals if math.isfinite(e["val_loss"])]
    record = {"method": method, "lr": lr, "seed": seed, "seconds": time.perf_counter() - t0,
              "median_step_s": statistics.median(s["step_time"] for s in hist.steps),
              "trainable": sum(p.numel() for p in result.model.parameters() if p.requires_grad),
              "train_loss": hist.losses, "evals": hist.evals,
              "best_step": best["step"], "best_val": best["val"] if finite else None,
              "last_val": hist.evals[-1]["val_loss"] if hist.evals else None}
    return record, result.model, best["state"]


def measure(ctx: "Context", method: str, model) -> dict:
    """Exact match on the test items, forgetting (KL, NLL) and the capitals probe, now."""
    em = exact_match(model, ctx.tokenizer, ctx.data["test"], task=ctx.cfg.task, batch_size=50)
    k, n = em["correct"], em["total"]
    out = {"accuracy": k / n, "correct": k, "total": n, "interval": stats.wilson(k, n),
           "items": [x["ok"] for x in em["examples"]],
           "forgetting": divergence(model, ctx.base_lp, ctx.general, ctx.pad_id),
           "capitals": retention(model, ctx.tokenizer, probe=ctx.probe)["score"]}
    if method == "qlora":   # against its own 4-bit base (what its adapters switched off compute)
        out["forgetting_own_base"] = divergence(model, ctx.nf4_log_probs(), ctx.general, ctx.pad_id)
    return out


# ---------------------------------------------------------------------------- the study
@dataclass
class Context:
    cfg: StudyConfig
    out: Path
    tokenizer: object
    data: object
    base: object            # the full-precision base: the reference for forgetting
    general: object         # tokenized base answers to general prompts
    probe: list
    pad_id: int
    base_lp: list = None    # the base's log-probabilities on those answers (kit.evaluate)
    nf4_lp: list = None     # ... and the 4-bit base's, once QLoRA needs them

    def nf4_log_probs(self) -> list:
        if self.nf4_lp is None:
            nf4, _ = load_model(self.cfg.model, quantization="nf4")
            self.nf4_lp = reference_log_probs(nf4, self.general, self.pad_id)
        return self.nf4_lp


def _read(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _write(path: Path, payload) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)                     # a run file is whole or absent


def _base_record(ctx: Context) -> dict:
    """The bases before any training: exact match, capitals, and what 4-bit storage alone does."""
    nf4, _ = load_model(ctx.cfg.model, quantization="nf4")
    rec = {}
    for name, m in (("fp32", ctx.base), ("nf4", nf4)):
        em = exact_match(m, ctx.tokenizer, ctx.data["test"], task=ctx.cfg.task, batch_size=50)
        rec[name] = {"accuracy": em["accuracy"], "correct": em["correct"], "total": em["total"],
                     "interval": stats.wilson(em["correct"], em["total"]),
                     "capitals": retention(m, ctx.tokenizer, probe=ctx.probe)["score"]}
    rec["nf4"]["forgetting"] = divergence(nf4, ctx.base_lp, ctx.general, ctx.pad_id)  # quantization damage
    return rec


def choose(sweep: dict[float, dict]) -> float:
    """The rate whose run reached the lowest validation loss (a diverged run counts as worst)."""
    return min(sweep, key=lambda lr: sweep[lr]["best_val"] if sweep[lr]["best_val"] is not None else math.inf)


def plan(cfg: StudyConfig) -> int:
    return len(cfg.methods) * (len(next(iter(cfg.rates.values()))) + cfg.seeds - 1)


def run(cfg: StudyConfig | None = None, out="runs/study") -> dict:
    """Run (or resume) the study into `out`; returns the summary (also <out>/study.json)."""
    cfg = cfg or StudyConfig()
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "weights").mkdir(exist_ok=True)
    started = time.perf_counter()
    settings = _read(out / "settings.json")
    if settings is not None and settings != _jsonable(cfg):
        raise ValueError(f"{out} holds a study with other settings; use another --out, or delete it.")
    _write(out / "settings.json", _jsonable(cfg))

    base, tokenizer = load_model(cfg.model)
    data = make_task(cfg.task, n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test, seed=cfg.data_seed)
    pad_id = pad_token_id(tokenizer)
    general_file = out / "general_answers.json"
    if not general_file.exists():
        answers = reference_answers(base, tokenizer, GENERAL_PROMPTS[:cfg.n_general])
        _write(general_file, answers.to_dict())
    general = tokenize(Dataset.from_dict(_read(general_file)), tokenizer)
    ctx = Context(cfg, out, tokenizer, data, base, general, RETENTION_PROBE[:cfg.n_probe], pad_id,
                  base_lp=reference_log_probs(base, general, pad_id))
    base_rec = _read(out / "base.json")
    if base_rec is None:
        base_rec = _base_record(ctx)
        _write(out / "base.json", base_rec)

    bar = tqdm(total=plan(cfg), desc="study runs", unit="run", file=sys.stderr)
    methods = {}
    for method in cfg.methods:
        rates = sorted(cfg.rates[method])
        sweep = {lr: _run_or_read(ctx, method, lr, 0, bar) for lr in rates}
        for _ in range(cfg.extend):        # the best rate at an edge: one more rate beyond it
            best = choose(sweep)
            if best not in (rates[0], rates[-1]):
                break
            step = rates[1] / rates[0] if best == rates[0] else rates[-1] / rates[-2]
            new = best / step if best == rates[0] else best * step
            new = float(f"{new:.3g}")
            bar.total += 1
            rates = sorted(rates + [new])
            sweep[new] = _run_or_read(ctx, method, new, 0, bar)
        chosen = choose(sweep)
        if sweep[chosen]["measured"] is None:
            sweep[chosen]["measured"] = measure_chosen(ctx, sweep[chosen])
            _write(out / "runs" / f"{run_name(method, chosen, 0)}.json", sweep[chosen])
        for lr in rates:                   # the sweep's weights are not needed any more
            for when in ("best", "last"):
                (out / "weights" / f"{run_name(method, lr, 0)}-{when}.safetensors").unlink(missing_ok=True)
        seeds = [sweep[chosen]] + [_run_or_read(ctx, method, chosen, s, bar)
                                   for s in range(1, cfg.seeds)]
        methods[method] = {"rates": rates, "chosen_lr": chosen, "at_edge": chosen in (rates[0], rates[-1]),
                           "sweep": [{k: sweep[lr][k] for k in ("lr", "best_val", "last_val", "best_step")}
                                     for lr in rates],
                           "runs": seeds}
    bar.close()
    summary = summarize(cfg, methods, base_rec)
    summary["hardware"] = _hardware()
    summary["versions"] = library_versions()
    summary["recorded_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    summary["command"] = "python -m kit study" + (" --smoke" if cfg == SMOKE else "")
    summary["commit"] = _commit()
    summary["train_seconds"] = sum(_read(p)["seconds"] for p in (out / "runs").glob("*.json"))
    summary["wall_s_this_call"] = time.perf_counter() - started  # a resumed study: this call only
    _write(out / "study.json", summary)
    return _read(out / "study.json")          # as JSON holds it (tuples become lists)


def _run_or_read(ctx: Context, method: str, lr: float, seed: int, bar) -> dict:
    """A finished run is read from its file; otherwise it is trained (and, at a chosen rate,
    measured). Sweep runs (seed 0) keep their best and last weights on disk until the rate is
    chosen, so the chosen one is measured without training it again."""
    name = run_name(method, lr, seed)
    path = ctx.out / "runs" / f"{name}.json"
    record = _read(path)
    if record is None:
        bar.set_postfix_str(name)
        record, model, best_state = train_one(ctx, method, lr, seed)
        record["measured"] = None
        weights = ctx.out / "weights"
        if seed == 0:                       # measured later, if this rate is chosen
            save_file({k: v.contiguous() for k, v in _trainable(model).items()}, str(weights / f"{name}-last.safetensors"))
            if best_state is not None:
                save_file({k: v.contiguous() for k, v in best_state.items()}, str(weights / f"{name}-best.safetensors"))
        else:
            record["measured"] = _measure_both(ctx, method, model, best_state, record)
        _write(path, record)
        del model
    bar.update(1)
    return record


def _measure_both(ctx: Context, method: str, model, best_state, record) -> dict:
    """The run's measurements at its last step, then at its best-validation step."""
    out = {"last": measure(ctx, method, model)}
    if best_state is not None and record["best_step"] != ctx.cfg.max_steps:
        _load_trainable(model, best_state)
        out["best"] = measure(ctx, method, model)
    else:
        out["best"] = out["last"]           # the best step was the last one
    return out


def measure_chosen(ctx: Context, record: dict) -> dict:
    """Measure a sweep run (seed 0) from its saved weights."""
    name = run_name(record["method"], record["lr"], record["seed"])
    weights = ctx.out / "weights"
    model, _ = load_model(ctx.cfg.model, quantization="nf4" if record["method"] == "qlora" else None)
    torch.manual_seed(record["seed"])
    model = prepare_model(model, record["method"], _config(ctx.cfg, record["lr"], record["seed"]))
    _load_trainable(model, read_tensors(weights / f"{name}-last.safetensors", "checkpoint"))
    best_file = weights / f"{name}-best.safetensors"
    best = read_tensors(best_file, "checkpoint") if best_file.exists() else None
    model.eval()
    return _measure_both(ctx, record["method"], model, best, record)


# ---------------------------------------------------------------------------- summary
def _jsonable(cfg: StudyConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _commit() -> str | None:
    """The kit's git commit, when it runs from a clone (None otherwise)."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=5)
    except OSError:
        return None
    return done.stdout.strip() or None


def _hardware() -> str:
    p = profile()
    if p.device == "cuda":
        return f"{p.name} (CUDA {p.capability[0]}.{p.capability[1]}, {p.total_memory / 1e9:.0f} GB)"
    return f"CPU {platform.machine()} x{os.cpu_count()} cores, {p.dtype_name}"


def summarize(cfg: StudyConfig, methods: dict, base: dict) -> dict:
    """Per method: the chosen rate, accuracy per seed and over seeds (at the best-validation
    step and at the last step), forgetting; between methods: paired tests on the same items."""
    per = {}
    for m, info in methods.items():
        at = {}
        for when in ("best", "last"):
            runs = [r["measured"][when] for r in info["runs"]]
            at[when] = {
                "accuracy": stats.mean_interval([r["accuracy"] for r in runs]),
                "per_seed": [{"seed": r0["seed"], "accuracy": r["accuracy"], "interval": r["interval"],
                              "kl": r["forgetting"]["kl"], "capitals": r["capitals"]}
                             for r0, r in zip(info["runs"], runs)],
                "pooled": dict(zip(("low", "high"), stats.wilson(sum(r["correct"] for r in runs),
                                                                 sum(r["total"] for r in runs)))),
                "kl": stats.mean_interval([r["forgetting"]["kl"] for r in runs]),
                "nll": stats.mean_interval([r["forgetting"]["nll"] for r in runs]),
                "capitals": stats.mean_interval([r["capitals"] for r in runs])}
            if m == "qlora":
                at[when]["kl_own_base"] = stats.mean_interval([r["forgetting_own_base"]["kl"] for r in runs])
        per[m] = {k: v for k, v in info.items() if k != "runs"} | at | {
            "step_s": statistics.median(r["median_step_s"] for r in info["runs"]),
            "best_steps": [r["best_step"] for r in info["runs"]],
            "curves": [{"seed": r["seed"], "train_loss": r["train_loss"], "evals": r["evals"]}
                       for r in info["runs"]]}
    pairs = {}
    names = list(methods)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            entry = {}
            for when in ("best", "last"):
                ra = [r["measured"][when]["items"] for r in methods[a]["runs"]]
                rb = [r["measured"][when]["items"] for r in methods[b]["runs"]]
                mean_a = [statistics.fmean(col) for col in zip(*ra)]
                mean_b = [statistics.fmean(col) for col in zip(*rb)]
                entry[when] = {"mcnemar_per_seed": [stats.mcnemar(x, y) for x, y in zip(ra, rb)],
                               "items_bootstrap": stats.paired_bootstrap(mean_a, mean_b),
                               # the verdict: the test items' noise and training's (seeds)
                               "bootstrap": stats.seeds_and_items_bootstrap(ra, rb, n_boot=2000)}
            pairs[f"{a} vs {b}"] = entry
    lrs = {m: methods[m]["chosen_lr"] for m in methods}
    return {"settings": _jsonable(cfg), "base": base, "methods": per, "pairs": pairs,
            "lora_conventions": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "scaling": cfg.lora_alpha / cfg.lora_r,
                                 "dropout": cfg.lora_dropout, "targets": "all-linear"},
            "lr_ratio": {"lora/full": lrs["lora"] / lrs["full"]} if {"lora", "full"} <= set(lrs) else {}}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def report(summary: dict) -> str:
    """The study in a few markdown tables: what was chosen, how well each method learned and
    how much it forgot (95% intervals), and which differences are more than noise."""
    s = summary["settings"]
    lines = [f"# Study: {s['model']}, task {s['task']}, {s['max_steps']} steps of {s['batch_size']}, "
             f"LoRA r={s['lora_r']} alpha={s['lora_alpha']} dropout={s['lora_dropout']}",
             f"{summary.get('hardware', '')}; {summary.get('recorded_at', '')}", "",
             "| method | rates swept | chosen rate | exact match at best step (mean, 95% t over seeds) "
             "| at last step | KL forgetting (best step) | capitals (best step) | s/step |",
             "|---|---|---|---|---|---|---|---|"]
    base = summary["base"]["fp32"]
    for m, info in summary["methods"].items():
        best, last = info["best"], info["last"]
        acc = lambda a: f"{_pct(a['mean'])} [{_pct(a['low'])}, {_pct(a['high'])}]"
        kl = best["kl"]
        lines.append(f"| {m} | {', '.join(f'{r:.3g}' for r in info['rates'])} | {info['chosen_lr']:.3g}"
                     f"{' (at the edge)' if info['at_edge'] else ''} | {acc(best['accuracy'])} | "
                     f"{acc(last['accuracy'])} | {kl['mean']:.4f} | {_pct(best['capitals']['mean'])} | "
                     f"{info['step_s']:.2f} |")
    lines += ["", f"Base model: exact match {_pct(base['accuracy'])} "
                  f"[{_pct(base['interval'][0])}, {_pct(base['interval'][1])}], capitals {_pct(base['capitals'])}; "
                  f"4-bit base alone: KL {summary['base']['nf4']['forgetting']['kl']:.4f} from the fp32 base.",
              "", "| pair (best step) | difference in accuracy (bootstrap over items and seeds, 95%) | "
                  "verdict | McNemar p per seed |", "|---|---|---|---|"]
    for pair, entry in summary["pairs"].items():
        b = entry["best"]["bootstrap"]
        ps = ", ".join(f"{r['p']:.3f}" for r in entry["best"]["mcnemar_per_seed"])
        lines.append(f"| {pair} | {100 * b['diff']:+.1f} points [{100 * b['low']:+.1f}, {100 * b['high']:+.1f}] "
                     f"| {b['verdict']} | {ps} |")
    if summary.get("lr_ratio"):
        lines += ["", f"LoRA's chosen rate / full fine-tuning's: {summary['lr_ratio']['lora/full']:.3g}"]
    return "\n".join(lines) + "\n"
