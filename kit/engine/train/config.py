"""The settings of a run (TrainConfig: transformers' and TRL's names, each knob with its meaning
and rule of thumb), what a run records (History), and the checks of both.
"""
from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field

from torch import nn

from kit.arch import DEFAULT_LR, OPTIMIZERS, check_method, quantization
from kit.engine.data import SAMPLING
from kit.machine.device import profile as read_profile
from kit.scratch.lora import check_hparams

SCHEDULES = ("cosine", "linear", "constant_with_warmup")


def knob(default, help: str, choices: tuple = (), low: float | None = None, may_change: bool = False):
    """A setting with its meaning: `help` is what `python -m kit finetune --help` and the
    comments of a recipe file say; `choices` and `low` are checked wherever it is set;
    `may_change`: a resumed run may set it otherwise than its checkpoint (it does not change
    what the finished steps mean: train for longer, report, keep checkpoints)."""
    return field(default=default, metadata={"help": help, "choices": choices, "low": low,
                                            "may_change": may_change})


# ---------------------------------------------------------------------------- settings
@dataclass
class TrainConfig:
    # ---- the loop
    max_steps: int = knob(60, "optimizer steps. Examples seen = max_steps x per_device_train_batch_size "
                          "x gradient_accumulation_steps x processes; one to three passes over the data "
                          "is typical.", low=1, may_change=True)
    per_device_train_batch_size: int = knob(8, "examples per forward pass per process. Memory grows "
                                            "with it; halve it (and double gradient_accumulation_steps) "
                                            "when out of memory.", low=1)
    gradient_accumulation_steps: int = knob(1, "forward passes summed into one optimizer step: the "
                                            "effective batch is per_device_train_batch_size x this, at "
                                            "the memory of one.", low=1)
    learning_rate: float | None = knob(None, "peak learning rate; null = the kit's default per method, "
                                       "chosen by the study (kit.arch.DEFAULT_LR: full 1e-4, lora and "
                                       "qlora 3e-3). Adapters take much larger steps than full "
                                       "fine-tuning.", low=0)
    warmup_steps: int | None = knob(None, "steps of linear warm-up from 0 to the peak; null = 10% of "
                                    "max_steps. Warm-up keeps the first updates, made with a poor "
                                    "gradient estimate, small.", low=0)
    lr_scheduler_type: str = knob("cosine", "after warm-up: cosine or linear decay to 0, or "
                                  "constant_with_warmup. Cosine is the common default.", SCHEDULES)
    weight_decay: float = knob(0.0, "AdamW's decoupled weight decay. 0 for short LoRA runs; 0.01-0.1 "
                               "for long full fine-tuning.", low=0)
    max_grad_norm: float = knob(1.0, "clip the gradient norm to this (0 = no clipping). 1.0 guards "
                                "against the odd huge step.", low=0)
    gradient_checkpointing: bool = knob(False, "recompute activations in the backward pass: activation "
                                        "memory falls to a fraction, each step takes longer. Turn it on "
                                        "when activations, not weights, are what does not fit (long "
                                        "sequences, big batches).")
    answer_logits_only: bool = knob(False, "compute the output layer's logits only at the positions the "
                                    "loss scores (the answers; kit.engine.train.answer_loss): the same "
                                    "loss up to float rounding, 8 to 18% less time per step of the "
                                    "bundled model on a CPU (benchmarks/bench_answer_loss.py). Off, the "
                                    "loss is the model's own, bit for bit.")
    optim: str = knob("adamw_torch", "adamw_torch (two fp32 moments, 8 bytes per trained parameter), "
                      "sgd (no state), adamw_8bit or paged_adamw_8bit (bitsandbytes, CUDA only: about 2 "
                      "bytes; paged: spills to CPU memory on spikes).", tuple(OPTIMIZERS))
    train_sampling_strategy: str = knob("random", "the order of the training examples: random (a "
                                        "fresh seeded shuffle each epoch), group_by_length (each "
                                        "batch of similar lengths: less padding, faster steps on data "
                                        "of varying length) or sequential.", SAMPLING)
    eval_steps: int = knob(20, "validation loss every N steps (and at the start and end); 0 = never. "
                           "Each costs a pass over the validation examples.", low=0, may_change=True)
    early_stopping_patience: int = knob(0, "stop when the validation loss has not improved for this many "
                                        "evaluations in a row (a plateau); 0 = train to max_steps. Needs "
                                        "eval_steps > 0 and validation examples.", low=0)
    early_stopping_threshold: float = knob(0.0, "an evaluation improves only if it lowers the best "
                                           "validation loss so far by more than this; the best stays "
                                           "where the run last improved so (Keras' min_delta).", low=0)
    seed: int = knob(0, "seeds the data order, the adapters' initialisation and dropout: same seed, same "
                     "run (exactly so on a CPU).")
    max_length: int = knob(256, "tokens per example, prompt and answer; longer ones are truncated. Set it "
                           "just above your longest example: memory grows with it.", low=8)
    disable_tqdm: bool = knob(False, "hide the progress bar.", may_change=True)
    # ---- LoRA adapters (method lora or qlora); their rules: kit.scratch.lora.check_hparams, the one place
    lora_r: int = knob(8, "adapter rank r: trainable parameters grow linearly with it. 8-16 suits most "
                       "tasks; raise it when the loss plateaus above full fine-tuning's.")
    lora_alpha: float = knob(16, "the update is scaled by lora_alpha / lora_r; lora_alpha = 2 x lora_r "
                             "is a common choice.")
    lora_dropout: float = knob(0.05, "dropout on the adapter's input: a little regularisation for small "
                               "data; 0 (peft's default) turns it off.")
    lora_target_modules: str | list = knob("all-linear", "which layers get adapters: all-linear, or a "
                                           "list such as [q_proj, v_proj] (the original LoRA paper's). "
                                           "All linear layers usually learn more per parameter.")
    use_dora: bool = knob(False, "DoRA: each adapted weight is split into a magnitude per output and a "
                          "direction, and the LoRA update moves the direction (peft's use_dora). A few more "
                          "parameters to train, slower steps; method lora only.")
    loraplus_lr_ratio: float = knob(0.0, "LoRA+: lora_B learns this many times faster than lora_A (peft's "
                                    "create_loraplus_optimizer; its paper suggests 16, with a somewhat lower "
                                    "learning_rate); 0 = off, both at learning_rate.", low=0)
    use_rslora: bool = knob(False, "scale by lora_alpha / sqrt(lora_r) instead of lora_alpha / lora_r: "
                            "steadier when you try large ranks.")
    # ---- checkpoints (with a checkpoint_dir)
    save_steps: int = knob(20, "checkpoint every N steps (and at the end and on Ctrl-C); 0 = only then. "
                           "On Colab, where sessions end, keep it small.", low=0, may_change=True)
    save_total_limit: int = knob(2, "newest checkpoints kept on disk; a full fine-tuning checkpoint of a "
                                 "7B model is about 80 GB.", low=1, may_change=True)
    stop_after: int = knob(0, "end this run after N more steps, checkpointed, and resume later with the "
                           "same command (for sessions with a time limit); 0 = run to max_steps.", low=0,
                           may_change=True)


# the settings a resumed run may change (kit.engine.checkpoint checks every other one)
RESUMABLE = frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["may_change"])


@dataclass
class History:
    steps: list = field(default_factory=list)   # {step, loss, lr, tokens, tokens_per_s, step_time, memory}
    evals: list = field(default_factory=list)   # {step, val_loss}
    method: str = ""
    memory_kind: str = ""       # what "memory" measures: "cuda_peak_allocated" or "cpu_peak_rss"
    config: dict = field(default_factory=dict)
    resumed_at: list = field(default_factory=list)  # steps from which a checkpoint was resumed
    stop: str = ""              # why the run ended: "cap" (max_steps), "plateau" (early stopping), "paused" (stop_after)

    @property
    def losses(self) -> list[float]:
        return [s["loss"] for s in self.steps]

    def median_step_s(self, skip: int = 0) -> float | None:
        """The median seconds per step, leaving out the first `skip` steps (on a GPU the first
        pays for kernel selection and allocation) when there are more; None before any step."""
        times = [s["step_time"] for s in self.steps]
        times = times[skip:] or times
        return statistics.median(times) if times else None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class FinetuneResult:
    model: nn.Module
    history: History
    finished: bool = True       # False when stop_after ended the run before max_steps
    checkpoint: str | None = None  # the last checkpoint written, if any


# ---------------------------------------------------------------------------- checks
def check_value(name: str, value, spec) -> None:
    """Check one setting against its field's type, choices and lower bound; the error names
    the setting, what it got and what it takes."""
    meta, kind = spec.metadata, spec.type
    if "int" in kind and "float" not in kind and value is not None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be a whole number; got {value!r}. Default: {spec.default!r}.")
    if "float" in kind and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{name} must be a number; got {value!r}. Default: {spec.default!r}.")
    if kind == "bool" and not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false; got {value!r}.")
    if meta.get("choices") and value not in meta["choices"]:
        raise ValueError(f"{name} must be one of {list(meta['choices'])}; got {value!r}.")
    if meta.get("low") is not None and value is not None and value < meta["low"]:
        raise ValueError(f"{name} must be >= {meta['low']:g}; got {value!r}. {meta['help'][:1].upper()}"
                         f"{meta['help'][1:]}")


def check_config(method: str, config: TrainConfig) -> None:
    check_method(method)
    for spec in dataclasses.fields(TrainConfig):
        check_value(spec.name, getattr(config, spec.name), spec)
    if config.learning_rate is not None and not config.learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0 or None (per-method default {DEFAULT_LR}); "
                         f"got {config.learning_rate!r}.")
    if config.early_stopping_patience and not config.eval_steps:
        raise ValueError(f"early_stopping_patience={config.early_stopping_patience} needs evaluations to "
                         "watch: set eval_steps > 0 (e.g. 10), or early_stopping_patience=0.")
    if OPTIMIZERS[config.optim].cuda_only and read_profile().device != "cuda":
        raise ValueError(f"optim={config.optim!r} needs a CUDA GPU (bitsandbytes' 8-bit optimizers); "
                         "this machine has none. Use optim='adamw_torch'.")
    check_hparams(config.lora_r, config.lora_alpha, config.lora_dropout)
    if method == "full" and (config.use_dora or config.loraplus_lr_ratio):
        raise ValueError("use_dora and loraplus_lr_ratio shape LoRA adapters; method='full' has none. Use "
                         "method='lora', or leave them at False and 0.")
    if quantization(method) and config.use_dora:
        raise ValueError("use_dora with method='qlora': the kit's merge of a 4-bit base adds B @ A and "
                         "knows nothing of DoRA's magnitudes, so it cannot ship such a model. Use "
                         "method='lora' for DoRA, or use_dora=False.")
    if 0 < config.loraplus_lr_ratio < 1:
        raise ValueError(f"loraplus_lr_ratio={config.loraplus_lr_ratio} would make lora_B slower than "
                         "lora_A; LoRA+ wants it >= 1 (16 in its paper), or 0 for off.")


def with_overrides(config: TrainConfig | None, overrides: dict) -> TrainConfig:
    """finetune(..., max_steps=10, lora_r=4): TrainConfig fields by name."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"Unknown setting(s) {unknown}. TrainConfig fields: {sorted(names)}.")
    return dataclasses.replace(config or TrainConfig(), **overrides)
