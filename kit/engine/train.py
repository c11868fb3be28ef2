"""Fine-tune a causal language model: full fine-tuning, LoRA or QLoRA, one loop.

    result = finetune(model, tokenizer, data, method="lora", max_steps=60)
    result.model            # the trained model (a peft model for "lora" / "qlora")
    result.history.steps    # one record per optimizer step: loss, lr, tokens/s, memory

The three methods differ only in `prepare_model`, i.e. in WHICH parameters train
(kit.arch.METHODS):

| method  | base weights              | what trains                       |
|---------|---------------------------|-----------------------------------|
| "full"  | fp32, trainable           | every parameter                   |
| "lora"  | frozen (compute dtype)    | LoRA adapters A, B (fp32)         |
| "qlora" | frozen, 4-bit NF4         | the same LoRA adapters (fp32)     |

QLoRA is LoRA over a quantized base: load the model with
`load_model(name, quantization="nf4")` and the rest is the same code path
(torchtune's "one switch"). After `prepare_model` the loop does not know which
method it runs.

Precision follows `kit.machine.device.profile()`: fp32 on a CPU; on CUDA autocast to bf16
(compute capability >= 8.0) or fp16 with a gradient scaler (a T4, 7.5). The
parameters the optimizer updates stay fp32 everywhere.

The settings (`TrainConfig`) carry the names of transformers' `TrainingArguments`
(`learning_rate`, `max_steps`, ...) and of TRL's LoRA options (`lora_r`, `lora_alpha`,
...), so what you set here you can set there.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import resource
import statistics
import sys
import time
import zlib
from dataclasses import dataclass, field

import torch
from datasets import Dataset, DatasetDict
from torch import nn
from tqdm.auto import tqdm

from kit.machine import bnb_check
from kit.engine import checkpoint
from kit.arch import DEFAULT_LR, OPTIMIZERS, check_method, quantization, target_modules
from kit.engine.data import SAMPLING, batches, pad_token_id, tokenize
from kit.machine.device import DeviceProfile, bnb_error, profile as read_profile
from kit.engine.evaluate import validation_loss
from kit.scratch.lora import check_hparams
from kit.machine.memory import estimate

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


# ---------------------------------------------------------------------------- prepare
def is_4bit(model: nn.Module) -> bool:
    """True if the model holds bitsandbytes 4-bit layers (a QLoRA base)."""
    kinds = _bnb_kinds()
    return bool(kinds) and any(isinstance(m, kinds[0]) for m in model.modules())


def _bnb_kinds() -> tuple:
    """bitsandbytes' 4-bit and 8-bit Linear classes, () where it is not installed."""
    try:
        import bitsandbytes as bnb  # optional: a CPU-only install may lack it
    except ImportError:
        return ()
    return bnb.nn.Linear4bit, bnb.nn.Linear8bitLt


def linear_names(model: nn.Module) -> list[str]:
    """The short names of the Linear layers LoRA can target ("q_proj", ...), lm_head excluded."""
    return sorted({n.rpartition(".")[2] for n in target_modules(model, "all-linear", (nn.Linear, *_bnb_kinds()))})


def prepare_model(model: nn.Module, method: str, config: TrainConfig | None = None,
                  **overrides) -> nn.Module:
    """Decide which parameters train. Returns the model to train (a peft model for LoRA).

    full : every parameter trainable, in fp32 (master weights; autocast does the rest).
    lora : base frozen, peft LoRA adapters on `lora_target_modules`, adapters fp32.
    qlora: the model must be 4-bit already; peft's prepare_model_for_kbit_training
           (norms and embeddings to fp32), then the same LoRA.
    Settings come from `config` (a TrainConfig) with keyword overrides: prepare_model(m, "lora", lora_r=4).
    """
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training  # slow: 4 s

    config = with_overrides(config, overrides)
    check_method(method)
    if isinstance(model, PeftModel):
        raise ValueError("This model already has adapters (a peft model). Pass it to finetune() "
                         "to keep training them, or start from a fresh base model.")
    quantized = is_4bit(model)
    if quantization(method) and not quantized:
        raise ValueError("method='qlora' needs a 4-bit base model; this one has no bitsandbytes "
                         "Linear4bit layers. Load it with load_model(name, quantization='nf4'), "
                         "or use method='lora' on this model.")
    if not quantization(method) and quantized:
        raise ValueError(f"method={method!r} on a 4-bit base: LoRA on a 4-bit base is QLoRA, use "
                         "method='qlora'; for full fine-tuning load the model with quantization=None.")
    if quantization(method):
        problem = bnb_error(read_profile(), 4)
        if problem:
            raise ValueError(f"method='qlora' cannot run here: {problem}")
    # Non-re-entrant checkpointing computes the gradients of the adapters even when the
    # layer's input does not require grad (frozen embeddings under LoRA).
    ckpt_kwargs = {"use_reentrant": False}

    if method == "full":
        if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
            model.float()  # fp32 master weights; autocast computes in 16 bit on a GPU
        model.requires_grad_(True)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        return model

    check_hparams(config.lora_r, config.lora_alpha, config.lora_dropout)
    target_modules(model, config.lora_target_modules, (nn.Linear, *_bnb_kinds()))  # names checked
    if quantization(method):
        bnb_check.protect(model)  # on a CPU: bitsandbytes' gradient-cutting repacking off (kit.machine.bnb_check)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing,
                                                gradient_checkpointing_kwargs=ckpt_kwargs)
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_target_modules, use_rslora=config.use_rslora,
                      use_dora=config.use_dora, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()  # adapters train in fp32, whatever the base's dtype
    return model


# ---------------------------------------------------------------------------- pieces of the loop
def lr_at(step: int, peak: float, warmup: int, total: int, schedule: str = "cosine") -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then decay."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant_with_warmup":
        return peak
    progress = (step - warmup) / max(1, total - warmup)  # 0 -> 1 over the decay
    if schedule == "linear":
        return peak * (1.0 - progress)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def optimizer_class(name: str, device: torch.device) -> tuple[type, dict]:
    """(class, its extra arguments) of the optimizer named in kit.arch.OPTIMIZERS."""
    if name == "sgd":
        return torch.optim.SGD, {}
    if OPTIMIZERS[name].cuda_only:
        import bitsandbytes as bnb  # optional, CUDA only (checked in check_config)
        return (bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else bnb.optim.AdamW8bit), {}
    # fused: one kernel for the whole update (on a CPU, 0.12 s instead of 0.7 s per step for
    # 135M parameters); the same update rule as the default implementation, rounded differently
    return torch.optim.AdamW, {"fused": device.type in ("cpu", "cuda")}


def make_optimizer(params: list, name: str, lr: float, weight_decay: float, loraplus_model=None,
                   loraplus_lr_ratio: float = 0.0):
    """The optimizer named in kit.arch.OPTIMIZERS. With a LoRA+ ratio, peft's
    create_loraplus_optimizer builds it over `loraplus_model`'s trainable parameters, lora_B's
    group at ratio x lr. Each group's `lr_scale` is its rate over `lr`: the loop sets
    lr = schedule x lr_scale every step."""
    kind, extra = optimizer_class(name, params[0].device)
    if loraplus_lr_ratio:
        from peft.optimizers import create_loraplus_optimizer
        optimizer = create_loraplus_optimizer(loraplus_model, kind, lr=lr, loraplus_lr_ratio=loraplus_lr_ratio,
                                              weight_decay=weight_decay, **extra)
    else:
        optimizer = kind(params, lr=lr, weight_decay=weight_decay, **extra)
    for group in optimizer.param_groups:
        group["lr_scale"] = group["lr"] / lr
    return optimizer


def precision(prof: DeviceProfile) -> dict:
    """The device policy as the loop uses it: autocast dtype (None = plain fp32) and scaling."""
    if prof.device != "cuda":
        return {"autocast": None, "grad_scaling": False}
    return {"autocast": prof.compute_dtype, "grad_scaling": prof.grad_scaling}


def peak_memory(prof: DeviceProfile) -> tuple[int, str]:
    """(bytes, what it is): CUDA peak allocated since the last reset, or the process' peak RSS."""
    if prof.device == "cuda":
        return torch.cuda.max_memory_allocated(), "cuda_peak_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return (rss if sys.platform == "darwin" else rss * 1024), "cpu_peak_rss"


def tokenized_splits(data, tokenizer, max_length: int):
    """(train, validation or None) as tokenized Datasets; tokenizes prompt/response data."""
    if isinstance(data, Dataset):
        data = DatasetDict({"train": data})
    if not isinstance(data, DatasetDict) or "train" not in data:
        raise ValueError("data must be a DatasetDict with a 'train' split (and optionally "
                         "'validation'), e.g. kit.engine.data.make_task('dates').")
    if len(data["train"]) == 0:
        raise ValueError("data['train'] is empty: nothing to train on. Pass a dataset with examples, "
                         "e.g. kit.engine.data.make_task('dates', n_train=400).")
    if "input_ids" not in data["train"].column_names:
        data = tokenize(data, tokenizer, max_length=max_length)
    val = data.get("validation")
    return data["train"], (val if val is not None and len(val) > 0 else None)


def check_fits(model: nn.Module, method: str, config: TrainConfig, seq_len: int,
               prof: DeviceProfile) -> None:
    """On CUDA, refuse a run whose estimated memory exceeds the free memory (CPUs: skip).

    The weights are already on the GPU, so the step needs `total - weights` more bytes."""
    if prof.device != "cuda":
        return
    est = estimate(model.config, method, r=config.lora_r, targets=config.lora_target_modules,
                   batch_size=config.per_device_train_batch_size, seq_len=seq_len,
                   gradient_checkpointing=config.gradient_checkpointing, optimizer=config.optim,
                   compute_dtype=prof.compute_dtype, lora_dropout=config.lora_dropout, padded=True)
    need = est.total - est.weights - est.quant_constants
    free, _ = torch.cuda.mem_get_info()
    if need > free:
        raise ValueError(
            f"per_device_train_batch_size={config.per_device_train_batch_size} at {seq_len} tokens needs "
            f"about {need / 2**30:.1f} GiB more, but only {free / 2**30:.1f} GiB of GPU memory is free. Try "
            "a smaller batch (with gradient_accumulation_steps to keep the effective batch), "
            "gradient_checkpointing=True, or method='qlora' with a 4-bit base.")


# ---------------------------------------------------------------------------- several processes
class Processes:
    """One process, or several under `accelerate launch` (data parallel): wraps the model for
    gradient averaging, and averages what each process measured."""

    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator else 0
        self.world = accelerator.num_processes if accelerator else 1
        self.main = accelerator is None or accelerator.is_main_process

    def wrap(self, model: nn.Module) -> nn.Module:
        return self.accelerator.prepare_model(model) if self.accelerator else model

    def mean_loss_and_tokens(self, loss: float, tokens: int, device) -> tuple[float, int]:
        if self.accelerator is None:
            return loss, tokens
        reduce = self.accelerator.reduce
        return (reduce(torch.tensor(loss, device=device), "mean").item(),
                int(reduce(torch.tensor(tokens, device=device), "sum")))

    def wait(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------- checkpoints
class Checkpoints:
    """The loop's checkpoint bookkeeping (kit.engine.checkpoint writes and reads the files):
    resume from the newest intact checkpoint, save every `save_steps`, at the end and on
    Ctrl-C, always as the last FINISHED step left things (weights, optimizer, random state)."""

    def __init__(self, folder, model, optimizer, scaler, history: History, settings: dict,
                 keep: int, processes: Processes):
        self.folder, self.model, self.optimizer, self.scaler = folder, model, optimizer, scaler
        self.history, self.settings, self.keep, self.processes = history, settings, keep, processes
        self.last, self.resumed, self.done, self.rng = None, False, 0, torch.get_rng_state()

    def resume(self) -> int:
        """Restore the newest checkpoint (weights, optimizer, random state, history); the step
        to start from (0 without one)."""
        state = checkpoint.resume(self.folder, self.model, self.optimizer, self.scaler, self.settings,
                                  RESUMABLE) \
            if self.folder else None
        if state is None:
            return 0
        self.resumed, self.last, start = True, state["path"], state["step"]
        self.history.steps, self.history.evals = state["history"]["steps"], state["history"]["evals"]
        self.history.resumed_at = state["history"].get("resumed_at", []) + [start]
        self.done, self.rng = start, torch.get_rng_state()
        return start

    def finished(self, step: int) -> None:
        """Step `step` is complete: remember where the random generator stands."""
        self.done, self.rng = step, torch.get_rng_state()

    def save(self) -> None:
        """Checkpoint the last finished step (one process writes; the others wait)."""
        if self.folder and self.processes.main:
            torch.set_rng_state(self.rng)  # forget an unfinished step's random draws
            self.last = str(checkpoint.save(self.folder, self.done, self.model, self.optimizer,
                                            self.scaler, self.history.as_dict(), self.settings, self.keep))
        self.processes.wait()

    def every(self, save_steps: int, end: int) -> None:
        if self.folder and save_steps and self.done % save_steps == 0 and self.done < end:
            self.save()

    @contextlib.contextmanager
    def on_interrupt(self, start: int):
        """Ctrl-C inside: checkpoint every finished step, then let the interrupt through."""
        try:
            yield
        except KeyboardInterrupt:
            if self.folder and self.done > start:
                self.save()
            raise

    def at_end(self, start: int) -> None:
        if self.folder and (self.done > start or not self.resumed):
            self.save()


# ---------------------------------------------------------------------------- setting up a run
def best_evaluation(losses: list[float], threshold: float = 0.0) -> int:
    """The index of the best validation loss, where an evaluation counts as better only if it
    beats the best so far by more than `threshold` (Keras' EarlyStopping min_delta rule): a later
    loss within the threshold of the best is noise, not progress, so the best stays where the
    run last improved, and a run that creeps down by less than the threshold per evaluation
    still moves it once the creep adds up. A loss that is not finite never counts as better."""
    best = 0
    for i, loss in enumerate(losses):
        if math.isfinite(loss) and (not math.isfinite(losses[best]) or loss < losses[best] - threshold):
            best = i
    return best


@dataclass
class Run:
    """Everything the loop needs, made ready by `start_run`; `record` and `evaluate` are the
    loop's bookkeeping."""
    config: TrainConfig
    model: nn.Module            # what computes the loss (wrapped for several processes)
    inner: nn.Module            # the model itself (what is saved and returned)
    params: list                # the parameters that train
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # fp16 only: scales the loss so small gradients do not underflow
    autocast: object            # context factory for the forward pass (16-bit on a GPU)
    batches: object             # an endless seeded stream of this process's batches
    val_set: object             # tokenized validation split, or None
    pad_id: int
    lr: float                   # peak learning rate
    warmup: int
    start: int                  # first step to run (> 0 when resumed)
    end: int                    # last step of this run (stop_after may end it early)
    history: History
    checkpoints: Checkpoints
    processes: Processes
    prof: DeviceProfile
    on_eval: object = None      # called as on_eval(step, val_loss, model) after each evaluation

    @property
    def device(self):
        return self.params[0].device

    def evaluate(self, step: int) -> None:
        """Validation loss (eval mode, no gradients) into the history."""
        if self.val_set is not None and self.config.eval_steps:
            self.inner.eval()
            loss = validation_loss(self.inner, self.val_set, self.pad_id,
                                   self.config.per_device_train_batch_size)["loss"]
            self.history.evals.append({"step": step, "val_loss": loss})
            if self.on_eval is not None:
                self.on_eval(step, loss, self.inner)
            self.inner.train()

    def plateaued(self) -> bool:
        """Early stopping: `early_stopping_patience` evaluations in a row since the best one
        (`best_evaluation`: read from the history, so a resumed run counts on)."""
        patience = self.config.early_stopping_patience
        losses = [e["val_loss"] for e in self.history.evals]
        if not patience or not losses:
            return False
        return len(losses) - 1 - best_evaluation(losses, self.config.early_stopping_threshold) >= patience

    def record(self, step: int, loss: float, lr: float, tokens: int, slots: int, t0: float,
               crc=None) -> dict:
        """Step `step` is done: its record (several processes: the mean loss, all tokens).
        slots: token positions of the step's batches, padding included (this process's)."""
        if self.prof.device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        padding = 1 - tokens / slots                     # share of the batch that was padding
        loss, tokens = self.processes.mean_loss_and_tokens(loss, tokens, self.device)
        memory, self.history.memory_kind = peak_memory(self.prof)
        record = {"step": step, "loss": loss, "lr": lr, "tokens": tokens, "tokens_per_s": tokens / dt,
                  "step_time": dt, "memory": memory, "padding": padding} | (
                      {"batch_crc": crc} if crc is not None else {})
        self.history.steps.append(record)
        self.checkpoints.finished(step)
        return record


def start_run(model: nn.Module, tokenizer, data, method: str, config: TrainConfig,
              checkpoint_dir=None, accelerator=None) -> Run:
    """Check the settings, tokenize the data, decide what trains, build the optimizer, and
    resume from the newest checkpoint in `checkpoint_dir` if there is one."""
    check_config(method, config)
    prof = read_profile()
    amp = precision(prof)
    autocast = (lambda: torch.autocast("cuda", dtype=amp["autocast"])) if amp["autocast"] \
        else contextlib.nullcontext
    lr = config.learning_rate or DEFAULT_LR[method]
    warmup = config.warmup_steps if config.warmup_steps is not None else config.max_steps // 10
    pad_id = pad_token_id(tokenizer)
    train_set, val_set = tokenized_splits(data, tokenizer, config.max_length)  # loss on answers only

    torch.manual_seed(config.seed)  # before the adapters are made: their initialisation is seeded
    if not (hasattr(model, "peft_config") and method != "full"):  # a peft model keeps its adapters
        model = prepare_model(model, method, config)
    check_fits(model, method, config, max(len(ids) for ids in train_set["input_ids"]), prof)
    procs = Processes(accelerator)
    inner, model = model, procs.wrap(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameters. A loaded adapter must be loaded "
                         "with load_adapter(..., is_trainable=True) to train it further.")
    optimizer = make_optimizer(params, config.optim, lr, config.weight_decay, inner, config.loraplus_lr_ratio)
    scaler = torch.amp.GradScaler("cuda", enabled=amp["grad_scaling"])
    history = History(method=method, config=dataclasses.asdict(config) | {"learning_rate": lr,
                                                                          "warmup_steps": warmup})
    ckpt = Checkpoints(checkpoint_dir, inner, optimizer, scaler, history,
                       history.config | {"method": method, "processes": procs.world},
                       config.save_total_limit, procs)
    start = ckpt.resume()
    stream = batches(train_set, config.per_device_train_batch_size, pad_id, seed=config.seed,
                     start=start * config.gradient_accumulation_steps, shard=(procs.rank, procs.world),
                     sampling=config.train_sampling_strategy)
    if config.early_stopping_patience and val_set is None:
        raise ValueError("early_stopping_patience needs validation examples: give data a 'validation' split "
                         "(kit.engine.data.make_task does), or set early_stopping_patience=0.")
    end = min(config.max_steps, start + config.stop_after) if config.stop_after else config.max_steps
    if prof.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return Run(config, model, inner, params, optimizer, scaler, autocast, stream, val_set, pad_id,
               lr, warmup, start, end, history, ckpt, procs, prof)


# ---------------------------------------------------------------------------- the loop
# The kit's loop and TRL's SFTTrainer on the same batches: the largest relative loss difference
# that still counts as the same computation. In float32 on a CPU the two differ by about 2e-5
# (the reference run of notebook 08): TRL scores the tokens with transformers' fused LM head,
# which sums the log-probabilities in another order than the model's own cross-entropy.
PARITY_TOLERANCE = 1e-4


def finetune(model: nn.Module, tokenizer, data, method: str = "lora",
             config: TrainConfig | None = None, *, checkpoint_dir=None, accelerator=None,
             on_step=None, on_eval=None, trace_batches: bool = False, **overrides) -> FinetuneResult:
    """Fine-tune `model` on `data` (prompt/response DatasetDict, or already tokenized).

    method:    "full" | "lora" | "qlora" (a 4-bit base from load_model(..., quantization="nf4")).
    config:    a TrainConfig; keyword overrides win: finetune(m, tok, data, max_steps=10, lora_r=4).
    A model that already has peft adapters keeps training them (method "lora"/"qlora").
    checkpoint_dir: write checkpoints there and resume from the newest one (class Checkpoints).
    accelerator: an `accelerate.Accelerator` when several processes train together (class Processes).
    on_step:     called with each step's record (a dict) after the step.
    on_eval:     called as on_eval(step, val_loss, model) after each validation loss (keep the
                 best step's weights, say: kit.study does).
    trace_batches: record a checksum of each step's token ids ("batch_crc"): which data it saw.
    """
    run = start_run(model, tokenizer, data, method, with_overrides(config, overrides),
                    checkpoint_dir, accelerator)
    run.on_eval = on_eval
    cfg, model, optimizer, scaler = run.config, run.model, run.optimizer, run.scaler
    accum = cfg.gradient_accumulation_steps
    model.train()
    if run.start == 0:
        run.evaluate(0)
    bar = tqdm(range(run.start, run.end), initial=run.start, total=cfg.max_steps,
               desc=f"{method} fine-tuning", disable=cfg.disable_tqdm or not run.processes.main)
    with run.checkpoints.on_interrupt(run.start):          # Ctrl-C: the finished steps are saved
        for step in bar:
            t0 = time.perf_counter()
            lr = lr_at(step, run.lr, run.warmup, cfg.max_steps, cfg.lr_scheduler_type)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # set by hand, nanoGPT-style (LoRA+: B x ratio)

            # ---- forward and backward over the micro-batches of this step
            loss_sum, tokens, slots, crc = 0.0, 0, 0, 0
            for _ in range(accum):
                batch = next(run.batches)                   # input_ids, attention_mask, labels: (B, T)
                if trace_batches:                           # on the host copy: no GPU sync
                    crc = zlib.crc32(batch["input_ids"].numpy().tobytes(), crc)
                batch = {k: v.to(run.device) for k, v in batch.items()}
                with run.autocast():
                    loss = model(**batch).loss              # labels -100 (prompt, padding) ignored
                scaler.scale(loss / accum).backward()       # gradients add up over the micro-batches
                loss_sum += loss.item() / accum
                tokens += int(batch["attention_mask"].sum())
                slots += batch["attention_mask"].numel()       # tokens + padding
            # ---- clip, step, zero
            if cfg.max_grad_norm:
                scaler.unscale_(optimizer)                  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(run.params, cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

            # ---- record, evaluate, checkpoint
            record = run.record(step + 1, loss_sum, lr, tokens, slots, t0, crc if trace_batches else None)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
            if cfg.eval_steps and ((step + 1) % cfg.eval_steps == 0 or step + 1 == cfg.max_steps):
                run.evaluate(step + 1)
            if on_step is not None:
                on_step(record)
            if cfg.eval_steps and (step + 1) % cfg.eval_steps == 0 and run.plateaued():
                run.history.stop = "plateau"                # early stopping: validation stopped improving
                break
            run.checkpoints.every(cfg.save_steps, run.end)
    if not run.history.stop:
        run.history.stop = "cap" if run.checkpoints.done >= cfg.max_steps else "paused"
    run.checkpoints.at_end(run.start)
    run.inner.eval()
    finished = run.history.stop in ("cap", "plateau")
    return FinetuneResult(model=run.inner, history=run.history, finished=finished,
                          checkpoint=run.checkpoints.last)
