"""The comparison, second edition: `python -m kit study` (make study).

Full fine-tuning, LoRA and QLoRA on the same model, task and data, each trained until its
validation loss stops improving:

  1. every run: a constant learning rate after a short warm-up (no decay forced at an arbitrary
     horizon), validation loss every `eval_steps` steps on `n_val` items, early stopping after
     `patience` evaluations without an improvement of more than `threshold`, and a cap of
     `max_steps` high enough that the chosen rates stop on a plateau. At every evaluation the
     forgetting KL on the first `n_general_eval` general prompts too (QLoRA: also from its own
     4-bit base), so each run draws a trajectory in the learning-forgetting plane. Each run records why it stopped
     ("plateau" or "cap") and is measured at its best-validation step: per-item answer NLL and
     exact match (teacher-forced: kit.engine.evaluate.answer_scores) on `n_test` items shared by all
     methods, KL on each of the `n_general` general prompts, the capitals probe.
  2. a learning-rate sweep per method (seed 0, half-decade rates), extended on the side where the
     lowest validation loss sits at an edge; the chosen rate is the lowest best validation loss.
  3. `seeds` seeds at each chosen rate (the data order, the adapters' initialisation); the
     neighbours of the chosen rate are placed against that seed spread (kit.study.report).
  4. a LoftQ arm: QLoRA with adapters initialised from what quantization lost
     (kit.engine.adapters.init_loftq), `loftq_seeds` seeds at QLoRA's chosen rate.

The LoRA conventions are the same for every run and stated in the results: r and alpha fixed
(scaling alpha / r, the LoRA paper's; rsLoRA and Schulman et al. 2025 scale otherwise), dropout 0
(full fine-tuning has none either), all linear layers.

Resumable: each finished run is a file in <out>/runs/; the same command skips them. The summary
(kit.study.report) goes to <out>/study.json and the figures (kit.study.plots) to <out>/figures/.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from kit.arch import METHOD_NAMES
from kit.machine.device import profile


@dataclass
class StudyConfig:
    model: str = "smollm2-135m"
    task: str = "dates"            # learnt to a plateau within the cap on 2 cores (see lesson 06)
    n_train: int = 1200            # 80 steps x 8 = 640 examples at most: no run sees an example twice
    n_val: int = 64                # validation loss at every evaluation: picks the rate and the best step
    n_test: int = 512              # items for the headline metrics, the same for every run
    n_general: int = 64            # general prompts for the forgetting KL (of GENERAL_PROMPTS)
    n_general_eval: int = 32       # ... the first of them at every evaluation (the measurement: all)
    general_tokens: int = 32       # tokens of the base's own answer to each general prompt
    n_probe: int = 30              # capitals questions (kit.engine.data.RETENTION_PROBE)
    max_steps: int = 80            # the cap; a run normally stops earlier, on a plateau
    batch_size: int = 8
    warmup_steps: int = 4
    schedule: str = "constant_with_warmup"
    eval_steps: int = 8            # an evaluation (validation loss + KL) costs a few steps' time on a CPU
    patience: int = 2              # evaluations (16 steps) without improvement before a run stops
    # an improvement is a drop of the best validation loss by more than this (kit.engine.train.best_evaluation):
    # on dates, one answer token of the ~700 in 64 validation items going from sure to a one-in-four
    # guess (-ln 0.25 = 1.39 nats) moves the loss by 0.002; smaller drops are noise, not learning
    threshold: float = 0.002
    lora_r: int = 8
    lora_alpha: float = 16         # fixed for every run: scaling alpha / r = 2
    lora_dropout: float = 0.0      # as full fine-tuning: no dropout anywhere
    # half-decade steps (x 3.16); a sweep is extended by up to `extend` rates on the side
    # where its best rate sits at the edge
    rates: dict = field(default_factory=lambda: {
        # full: centred on the rate the previous reference chose (3.16e-5; 1e-5 and 1e-4 were worse),
        # so the time goes to seeds and test items, not to extending the sweep
        "full": [1e-5, 3.16e-5, 1e-4],
        "lora": [3.16e-4, 1e-3, 3.16e-3],
        "qlora": [3.16e-4, 1e-3, 3.16e-3]})
    extend: int = 2
    seeds: int = 5                 # at each method's chosen rate
    loftq_seeds: int = 3           # QLoRA with LoftQ initialisation, at QLoRA's chosen rate
    methods: tuple = METHOD_NAMES
    data_seed: int = 0             # the data are the same for every run


# About a minute on tiny-llama (random weights: its numbers mean nothing): the whole pipeline and
# every output, for a try (python -m kit study --quick) and for the tests.
QUICK = StudyConfig(model="tiny-llama", n_train=64, n_val=8, n_test=16, n_general=6, n_general_eval=3,
                    general_tokens=8,
                    n_probe=4, max_steps=6, batch_size=4, warmup_steps=1, eval_steps=2, patience=2,
                    seeds=2, loftq_seeds=2, extend=1,
                    rates={"full": [1e-3, 1e-2], "lora": [1e-2, 1e-1], "qlora": [1e-2, 1e-1]})


def for_this_machine(cfg: StudyConfig | None = None) -> StudyConfig:
    """The default design, larger where a GPU makes it cheap (a higher cap, more items)."""
    cfg = cfg or StudyConfig()
    if profile().device == "cuda":
        cfg = dataclasses.replace(cfg, max_steps=200, n_test=1000, n_general=110, n_general_eval=110)
    return cfg


# ---------------------------------------------------------------------------- one run
def run_name(method: str, lr: float, seed: int, init: str = "plain") -> str:
    return f"{method}{'-' + init if init != 'plain' else ''}_lr{lr:.3g}_seed{seed}"


def choose(sweep: dict[float, dict]) -> float:
    """The rate whose run reached the lowest validation loss (a diverged run counts as worst)."""
    return min(sweep, key=lambda lr: sweep[lr]["best_val"] if sweep[lr]["best_val"] is not None else math.inf)


def plan(cfg: StudyConfig) -> int:
    per_method = len(next(iter(cfg.rates.values()))) + cfg.seeds - 1
    return len(cfg.methods) * per_method + (cfg.loftq_seeds if "qlora" in cfg.methods else 0)


# ---------------------------------------------------------------------------- provenance
