"""Running the study: each run trained to its plateau and measured (`train_one`, `measure`), the
rate sweeps, seeds and LoftQ arm in order, resumable (`run`); the design is kit.study.design.
"""
from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from tqdm.auto import tqdm

from kit.arch import quantization
from kit.engine.data import GENERAL_PROMPTS, RETENTION_PROBE, make_task, pad_token_id, tokenize
from kit.engine.evaluate import (answer_scores, divergences, reference_answers, reference_log_probs,
                                 retention, validation_loss)
from kit.engine.train import TrainConfig, best_evaluation, finetune, prepare_model
from kit.files import RUNS, write_json
from kit.machine.device import hardware, library_versions
from kit.machine.models import load_model
from kit.scratch.lora import trainable_parameters
from kit.study import report as study_report
from kit.study.design import QUICK, StudyConfig, choose, plan, run_name
from kit.study.records import clock, commit, jsonable, open_folder, read_record, restore, snapshot


def _config(cfg: StudyConfig, lr: float, seed: int) -> TrainConfig:
    return TrainConfig(max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
                       learning_rate=lr, warmup_steps=cfg.warmup_steps, lr_scheduler_type=cfg.schedule,
                       eval_steps=cfg.eval_steps, early_stopping_patience=cfg.patience,
                       early_stopping_threshold=cfg.threshold, seed=seed, disable_tqdm=True,
                       answer_logits_only=True,     # the same losses, 8-18% less time per step
                       lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout)


def train_one(ctx: "Context", method: str, lr: float, seed: int, init: str = "plain", keep: bool = False) -> dict:
    """Train one run to its plateau (or the cap), measuring forgetting at every evaluation, then
    measure it at its best-validation step. -> the run's record (written to <out>/runs/).
    keep: a sweep run, measured only if its rate is chosen: its model at the best step is kept
    in ctx.kept (`_measure_kept`) and its record says "measured": None until then."""
    model, _ = load_model(ctx.cfg.model, quantization=quantization(method))
    cfg = _config(ctx.cfg, lr, seed)
    loftq = None
    if init == "loftq":
        from kit.engine.adapters import init_loftq
        torch.manual_seed(seed)
        model = prepare_model(model, method, cfg)
        loftq = init_loftq(model, ctx.base)
    best = {"val": math.inf, "step": None, "state": None}
    trajectory = []

    def at_eval(step, val_loss, m):          # forgetting on the evaluations' share of the prompts
        kl = divergences(m, ctx.references(method, "eval"), ctx.general_eval, ctx.pad_id)
        trajectory.append({"step": step, "val_loss": val_loss, "kl": kl["fp32"]["kl"],
                           **({"kl_own": kl["nf4"]["kl"]} if "nf4" in kl else {}),
                           "per_item_kl": kl["fp32"]["per_item_kl"]})
        # the best evaluation as early stopping reads it: where the run last improved by more
        # than the threshold (kit.engine.train.best_evaluation); its weights are what is measured
        if best_evaluation([e["val_loss"] for e in trajectory], cfg.early_stopping_threshold) == len(trajectory) - 1:
            best.update(val=val_loss, step=step, state=snapshot(m))

    t0 = time.perf_counter()
    result = finetune(model, ctx.tokenizer, ctx.data, method, cfg, on_eval=at_eval)
    seconds = time.perf_counter() - t0
    hist = result.history
    if best["state"] is not None:
        restore(result.model, best["state"])
    record = {"method": method, "init": init, "lr": lr, "seed": seed, "seconds": seconds,
              "median_step_s": hist.median_step_s(),
              "trainable": trainable_parameters(result.model),
              "train_loss": hist.losses, "history": trajectory, "stop": hist.stop,
              "steps": len(hist.steps), "best_step": best["step"],
              "best_val": best["val"] if math.isfinite(best["val"]) else None,
              "loftq": loftq, "measured": None, "measure_seconds": 0.0}
    if keep:
        ctx.kept[run_name(method, lr, seed, init)] = result.model
        return record
    t1 = time.perf_counter()
    record["measured"] = measure(ctx, method, result.model)
    record["measure_seconds"] = time.perf_counter() - t1
    return record


def measure(ctx: "Context", method: str, model) -> dict:
    """The headline metrics, now: per-item answer NLL and exact match on the test items, KL per
    general prompt, all of them (QLoRA: from the fp32 base and from its own 4-bit base), the
    capitals probe."""
    scores = answer_scores(model, ctx.test, ctx.pad_id)
    kl = divergences(model, ctx.references(method), ctx.general, ctx.pad_id)
    return {"answer_nll": scores["nll"], "exact": scores["exact"],
            "mean_nll": scores["mean_nll"], "accuracy": scores["accuracy"],
            "kl": {name: {"kl": v["kl"], "per_item_kl": v["per_item_kl"]} for name, v in kl.items()},
            "capitals": retention(model, ctx.tokenizer, probe=ctx.probe)["score"]}


# ---------------------------------------------------------------------------- the study
@dataclass
class Context:
    cfg: StudyConfig
    out: Path
    tokenizer: object
    data: object
    test: object            # the tokenized test items
    base: object            # the full-precision base: the reference for forgetting
    general: object         # tokenized base answers to general prompts
    general_eval: object    # the first cfg.n_general_eval of them: the KL at every evaluation
    probe: list
    pad_id: int
    log_probs: dict = field(default_factory=dict)   # (base, prompts) -> the base's log-probabilities
    started: list = None    # [perf_counter at the last wall-clock entry] (see kit.study.records.clock)
    kept: dict = field(default_factory=dict)   # sweep runs not yet measured: name -> model at its best step

    def references(self, method: str, prompts: str = "all") -> dict:
        """The log-probabilities of the bases a run's forgetting is measured from (fp32; QLoRA
        also its 4-bit base) on the general prompts: "all" (self.general) or "eval"
        (self.general_eval), each computed once (kit.engine.evaluate.reference_log_probs)."""
        names = ("fp32", "nf4") if quantization(method) else ("fp32",)
        tokenized = {"all": self.general, "eval": self.general_eval}[prompts]
        for name in names:
            if (name, prompts) not in self.log_probs:
                base = self.base if name == "fp32" else self.nf4_base
                self.log_probs[name, prompts] = reference_log_probs(base, tokenized, self.pad_id)
        return {name: self.log_probs[name, prompts] for name in names}

    @functools.cached_property
    def nf4_base(self):
        """The base stored in 4 bits, loaded once: QLoRA's own reference and a point of the plane."""
        return load_model(self.cfg.model, quantization="nf4")[0]


def _base_record(ctx: Context) -> dict:
    """The bases before any training, measured as the runs are: the 4-bit base alone is a point
    of the learning-forgetting plane (its validation loss, its KL from the fp32 base)."""
    val = tokenize(ctx.data["validation"], ctx.tokenizer)
    rec = {}
    for name, m, method in (("fp32", ctx.base, "full"), ("nf4", ctx.nf4_base, "qlora")):
        rec[name] = measure(ctx, method, m) | {"val_loss": validation_loss(m, val, ctx.pad_id)["loss"]}
    return rec


def run(cfg: StudyConfig | None = None, out=RUNS / "study") -> dict:
    """Run (or resume) the study into `out`; returns the summary (also <out>/study.json)."""
    cfg = cfg or StudyConfig()
    ctx = _start(cfg, Path(out))
    base_rec = read_record(ctx.out / "base.json")
    if base_rec is None:
        base_rec = _base_record(ctx)
        write_json(ctx.out / "base.json", base_rec)
    # the ETA is the runs still to train at the mean pace of those trained in this call
    # (smoothing=0; a finished run read from its file raises `initial` so it does not count)
    bar = tqdm(total=plan(cfg), desc="study runs", unit="run", file=sys.stderr, smoothing=0)
    runs = [r for method in cfg.methods for r in _method_runs(ctx, method, bar)]
    bar.close()
    wall = clock(ctx.out, ctx.started)
    summary = study_report.summarize(jsonable(cfg), runs, base_rec)
    summary |= {"hardware": hardware(), "versions": library_versions(),
                "recorded_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": "python -m kit study" + (" --quick" if cfg == QUICK else ""), "commit": commit(),
                "train_seconds": sum(r["seconds"] + r.get("measure_seconds", 0) for r in runs),
                "wall_s": wall["wall_s"], "calls": wall["calls"]}
    write_json(ctx.out / "study.json", summary)
    return read_record(ctx.out / "study.json")          # as JSON holds it (tuples become lists)


def _start(cfg: StudyConfig, out: Path) -> Context:
    """The study's folder checked against its settings, the base model, the data, and the base's
    own answers to the general prompts (generated once, then read from general_answers.json)."""
    started = open_folder(out, cfg)
    base, tokenizer = load_model(cfg.model)
    data = make_task(cfg.task, n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test, seed=cfg.data_seed)
    pad_id = pad_token_id(tokenizer)
    general_file = out / "general_answers.json"
    if not general_file.exists():
        answers = reference_answers(base, tokenizer, GENERAL_PROMPTS[:cfg.n_general],
                                    max_new_tokens=cfg.general_tokens)
        write_json(general_file, answers.to_dict())
    general = tokenize(Dataset.from_dict(read_record(general_file)), tokenizer)
    return Context(cfg, out, tokenizer, data, tokenize(data["test"], tokenizer), base, general,
                   general.select(range(min(cfg.n_general_eval, len(general)))),
                   RETENTION_PROBE[:cfg.n_probe], pad_id, started=started)


def _method_runs(ctx: Context, method: str, bar) -> list[dict]:
    """One method's runs: the rate sweep at seed 0 (extended past an edge that holds the best
    rate), the other seeds at the chosen rate, and for QLoRA the LoftQ arm at that rate."""
    cfg = ctx.cfg
    rates = sorted(cfg.rates[method])
    sweep = {lr: _run_or_read(ctx, method, lr, 0, bar, keep=True) for lr in rates}
    for _ in range(cfg.extend):        # the best rate at an edge: one more rate beyond it
        best = choose(sweep)
        if best not in (rates[0], rates[-1]) or len(rates) < 2:
            break
        step = rates[1] / rates[0] if best == rates[0] else rates[-1] / rates[-2]
        new = float(f"{(best / step if best == rates[0] else best * step):.3g}")
        bar.total += 1
        rates = sorted(rates + [new])
        sweep[new] = _run_or_read(ctx, method, new, 0, bar, keep=True)
    chosen = choose(sweep)
    sweep[chosen] = _measure_kept(ctx, method, chosen, sweep[chosen])
    runs = list(sweep.values()) + [_run_or_read(ctx, method, chosen, s, bar) for s in range(1, cfg.seeds)]
    if quantization(method):             # LoftQ starts the adapters from what loading lost
        runs += [_run_or_read(ctx, method, chosen, s, bar, init="loftq") for s in range(cfg.loftq_seeds)]
    return runs


def _measure_kept(ctx: Context, method: str, lr: float, record: dict) -> dict:
    """The chosen rate's sweep run, measured: its kept model, or (trained by an earlier call of
    the study, whose process ended) trained again and measured. The other kept models are dropped."""
    if record["measured"] is None:
        kept = ctx.kept.get(run_name(method, lr, 0))
        if kept is None:
            record = train_one(ctx, method, lr, 0)
        else:
            t1 = time.perf_counter()
            record["measured"] = measure(ctx, method, kept)
            record["measure_seconds"] = time.perf_counter() - t1
        write_json(ctx.out / "runs" / f"{run_name(method, lr, 0)}.json", record)
        clock(ctx.out, ctx.started)
    ctx.kept.clear()
    return record


def _run_or_read(ctx: Context, method: str, lr: float, seed: int, bar, init: str = "plain",
                 keep: bool = False) -> dict:
    """A finished run is read from its file; otherwise it is trained and measured (keep: see
    train_one)."""
    path = ctx.out / "runs" / f"{run_name(method, lr, seed, init)}.json"
    record = read_record(path)
    if record is None:
        bar.set_postfix_str(path.stem)
        record = train_one(ctx, method, lr, seed, init, keep)
        write_json(path, record)
        clock(ctx.out, ctx.started)
    else:
        bar.initial += 1
    bar.update(1)
    return record
