"""Fine-tune a causal language model: full fine-tuning, LoRA or QLoRA, one loop.

    result = finetune(model, tokenizer, data, method="lora", steps=60)
    result.model            # the trained model (a peft model for "lora" / "qlora")
    result.history.steps    # one record per optimizer step: loss, lr, tokens/s, memory

The three methods differ only in `prepare_model`, i.e. in WHICH parameters train:

| method  | base weights              | what trains                       |
|---------|---------------------------|-----------------------------------|
| "full"  | fp32, trainable           | every parameter                   |
| "lora"  | frozen (compute dtype)    | LoRA adapters A, B (fp32)         |
| "qlora" | frozen, 4-bit NF4         | the same LoRA adapters (fp32)     |

QLoRA is LoRA over a quantized base: load the model with
`load_model(name, quantization="nf4")` and the rest is the same code path
(torchtune's "one switch"). After `prepare_model` the loop below does not know
which method it runs.

Precision follows `kit.device.profile()`: fp32 on a CPU; on CUDA autocast to bf16
(compute capability >= 8.0) or fp16 with a gradient scaler (a T4, 7.5). The
parameters the optimizer updates stay fp32 everywhere.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import resource
import sys
import time
import zlib
from dataclasses import dataclass, field

import torch
from torch import nn

from kit.device import DeviceProfile, bnb_error, profile as read_profile

METHODS = ("full", "lora", "qlora")
SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("adamw", "paged_adamw_8bit")

# Default peak learning rates, measured on this kit's tasks (SmolLM2-135M, batch 8):
#   full : 5e-5 learned the dates task (0% -> 100%); 1e-4 suited 3-digit addition.
#          Every weight moves, so the step must be small.
#   lora : 2e-3 for r=8, alpha=16 learned dates in 60 steps (4% -> 92%). Adapters
#          start at B = 0 and are few, so they take a ~40x larger step. Higher ranks
#          at the same alpha/r ratio can be too aggressive (r=16 at 2e-3 forgot much).
#   qlora: the same adapters as LoRA, so the same rate.
DEFAULT_LR = {"full": 5e-5, "lora": 2e-3, "qlora": 2e-3}


# ---------------------------------------------------------------------------- configs
@dataclass
class LoraSettings:
    r: int = 8                  # rank of delta_W = B @ A; higher = more capacity and memory
    alpha: float = 16           # lora_alpha; scaling = alpha / r (2 is a common ratio)
    dropout: float = 0.05       # dropout on the adapter's input; 0 turns it off
    targets: str | list[str] = "all-linear"  # or e.g. ["q_proj", "v_proj"] (the LoRA paper's)
    use_rslora: bool = False    # scaling = alpha / sqrt(r): steadier when r grows


@dataclass
class TrainConfig:
    steps: int = 60             # optimizer steps
    batch_size: int = 8         # examples per micro-batch; memory grows with it
    grad_accum: int = 1         # micro-batches per step: 8 batch * 4 accum = 32 examples/step
    lr: float | None = None     # peak learning rate; None = DEFAULT_LR[method]
    warmup_steps: int | None = None  # linear warm-up; None = 10% of steps
    schedule: str = "cosine"    # after warm-up: "cosine" | "linear" decay to 0, or "constant"
    weight_decay: float = 0.0   # AdamW decoupled weight decay
    max_grad_norm: float = 1.0  # clip the gradient norm; None or 0 = no clipping
    gradient_checkpointing: bool = False  # recompute activations: less memory, ~30% slower
    eval_every: int = 20        # validation loss every N steps (and at 0 and the end); 0 = never
    seed: int = 0               # same seed + same fresh model = same losses (on a CPU)
    optimizer: str = "adamw"    # "adamw" | "paged_adamw_8bit" (bitsandbytes, CUDA only)
    max_length: int = 256       # tokens per example; longer ones are truncated
    progress: bool = True       # show a tqdm progress bar
    save_every: int = 0         # with a checkpoint_dir: checkpoint every N steps (0 = only at the end)
    keep_checkpoints: int = 2   # newest checkpoints kept on disk
    stop_after: int = 0         # end this run after N more steps, checkpointed (0 = run to `steps`)
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class History:
    steps: list = field(default_factory=list)   # {step, loss, lr, tokens, tokens_per_s, step_time, memory}
    evals: list = field(default_factory=list)   # {step, val_loss}
    method: str = ""
    memory_kind: str = ""       # what "memory" measures: "cuda_peak_allocated" or "cpu_peak_rss"
    config: dict = field(default_factory=dict)
    resumed_at: list = field(default_factory=list)  # steps from which a checkpoint was resumed

    @property
    def losses(self) -> list[float]:
        return [s["loss"] for s in self.steps]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class FinetuneResult:
    model: nn.Module
    history: History
    finished: bool = True       # False when stop_after ended the run before `steps`
    checkpoint: str | None = None  # the last checkpoint written, if any


# ---------------------------------------------------------------------------- checks
def _check_config(method: str, config: TrainConfig) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}. Use 'lora' for "
                         "adapters, 'qlora' for adapters on a 4-bit base, 'full' for all weights.")
    for name in ("steps", "batch_size", "grad_accum"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}. E.g. {name}=8.")
    if config.lr is not None and not config.lr > 0:
        raise ValueError(f"lr must be > 0 or None (per-method default {DEFAULT_LR}); got {config.lr!r}.")
    if config.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}; got {config.schedule!r}.")
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {config.optimizer!r}.")
    if config.optimizer == "paged_adamw_8bit" and read_profile().device != "cuda":
        raise ValueError("optimizer='paged_adamw_8bit' needs a CUDA GPU (it pages optimizer state "
                         "through CUDA unified memory); this machine has none. Use optimizer='adamw'.")
    if config.warmup_steps is not None and config.warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0 or None (10% of steps); got {config.warmup_steps!r}.")
    if config.eval_every < 0:
        raise ValueError(f"eval_every must be >= 0 (0 = never); got {config.eval_every!r}.")
    for name, low in (("save_every", 0), ("keep_checkpoints", 1), ("stop_after", 0)):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")
    _check_lora(config.lora)


def _check_lora(lora: LoraSettings) -> None:
    if isinstance(lora.r, bool) or not isinstance(lora.r, int) or lora.r < 1:
        raise ValueError(f"r must be an integer >= 1; got {lora.r!r}. Use r=8 for a typical adapter.")
    if isinstance(lora.alpha, bool) or not isinstance(lora.alpha, (int, float)) or not lora.alpha > 0:
        raise ValueError(f"alpha must be a number > 0; got {lora.alpha!r}. A common choice is "
                         "alpha = 2 * r (alpha=16 for r=8).")
    if not 0 <= lora.dropout < 1:
        raise ValueError(f"dropout must be in [0, 1); got {lora.dropout!r}. Use 0.05, or 0 for none.")


def is_4bit(model: nn.Module) -> bool:
    """True if the model holds bitsandbytes 4-bit layers (a QLoRA base)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return False
    return any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def linear_names(model: nn.Module) -> list[str]:
    """The short names of the Linear layers LoRA can target ("q_proj", ...), lm_head excluded."""
    kinds = (nn.Linear,)
    try:
        import bitsandbytes as bnb
        kinds += (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    except ImportError:
        pass
    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, kinds)}
    names.discard("lm_head")
    return sorted(names)


# ---------------------------------------------------------------------------- prepare
def prepare_model(model: nn.Module, method: str, lora: LoraSettings | None = None,
                  gradient_checkpointing: bool = False) -> nn.Module:
    """Decide which parameters train. Returns the model to train (a peft model for LoRA).

    full : every parameter trainable, in fp32 (master weights; autocast does the rest).
    lora : base frozen, peft LoRA adapters on `lora.targets`, adapters fp32.
    qlora: the model must be 4-bit already; peft's prepare_model_for_kbit_training
           (norms and embeddings to fp32, inputs require grad), then the same LoRA.
    """
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    lora = lora or LoraSettings()
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    if isinstance(model, PeftModel):
        raise ValueError("This model already has adapters (a peft model). Pass it to finetune() "
                         "to keep training them, or start from a fresh base model.")
    quantized = is_4bit(model)
    if method == "qlora" and not quantized:
        raise ValueError("method='qlora' needs a 4-bit base model; this one has no bitsandbytes "
                         "Linear4bit layers. Load it with load_model(name, quantization='nf4'), "
                         "or use method='lora' on this model.")
    if method in ("full", "lora") and quantized:
        raise ValueError(f"method={method!r} on a 4-bit base: LoRA on a 4-bit base is QLoRA, use "
                         "method='qlora'; for full fine-tuning load the model with quantization=None.")
    if method == "qlora":
        problem = bnb_error(read_profile(), 4)
        if problem:
            raise ValueError(f"method='qlora' cannot run here: {problem}")
    # Re-entrant checkpointing drops gradients when the inputs do not require grad
    # (frozen embeddings under LoRA); the non-re-entrant variant does not.
    ckpt_kwargs = {"use_reentrant": False}

    if method == "full":
        if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
            model.float()  # fp32 master weights; autocast computes in 16 bit on a GPU
        for p in model.parameters():
            p.requires_grad_(True)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        return model

    _check_lora(lora)
    available = linear_names(model)
    targets = lora.targets
    if targets != "all-linear":
        targets = [targets] if isinstance(targets, str) else list(targets)
        unknown = [t for t in targets if t not in available]
        if unknown or not targets:
            raise ValueError(f"targets must be 'all-linear' or a list of Linear layer names from "
                             f"{available}; unknown: {unknown}. E.g. targets=['q_proj', 'v_proj'].")
    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs=ckpt_kwargs)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        model.enable_input_require_grads()  # belt and braces: also right for re-entrant
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=targets,
                        use_rslora=lora.use_rslora, task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()  # adapters train in fp32, whatever the base's dtype
    return model


# ---------------------------------------------------------------------------- pieces of the loop
def lr_at(step: int, peak: float, warmup: int, total: int, schedule: str = "cosine") -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then decay."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, total - warmup)  # 0 -> 1 over the decay
    if schedule == "linear":
        return peak * (1.0 - progress)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def precision(prof: DeviceProfile) -> dict:
    """The device policy as the loop uses it: autocast dtype (None = plain fp32) and scaling."""
    if prof.device != "cuda":
        return {"autocast": None, "grad_scaling": False}
    return {"autocast": prof.compute_dtype, "grad_scaling": prof.grad_scaling}


def make_optimizer(params: list, name: str, lr: float, weight_decay: float, prof: DeviceProfile):
    if name == "paged_adamw_8bit":  # CUDA only (checked in _check_config)
        import bitsandbytes as bnb
        return bnb.optim.PagedAdamW8bit(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def peak_memory(prof: DeviceProfile) -> tuple[int, str]:
    """(bytes, what it is): CUDA peak allocated since the last reset, or the process' peak RSS."""
    if prof.device == "cuda":
        return torch.cuda.max_memory_allocated(), "cuda_peak_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return (rss if sys.platform == "darwin" else rss * 1024), "cpu_peak_rss"


def tokenized_splits(data, tokenizer, max_length: int):
    """(train, validation or None) as tokenized Datasets; tokenizes prompt/response data."""
    from datasets import Dataset, DatasetDict
    from kit.data import tokenize

    if isinstance(data, Dataset):
        data = DatasetDict({"train": data})
    if not isinstance(data, DatasetDict) or "train" not in data:
        raise ValueError("data must be a DatasetDict with a 'train' split (and optionally "
                         "'validation'), e.g. kit.data.make_task('dates').")
    if len(data["train"]) == 0:
        raise ValueError("data['train'] is empty: nothing to train on. Pass a dataset with examples, "
                         "e.g. kit.data.make_task('dates', n_train=400).")
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
    from kit.memory import estimate

    est = estimate(model.config, method, r=config.lora.r, targets=config.lora.targets,
                   batch_size=config.batch_size, seq_len=seq_len,
                   gradient_checkpointing=config.gradient_checkpointing,
                   optimizer=config.optimizer, compute_dtype=prof.compute_dtype,
                   lora_dropout=config.lora.dropout, padded=True)
    need = est.total - est.weights - est.quant_constants
    free, _ = torch.cuda.mem_get_info()
    if need > free:
        raise ValueError(
            f"batch_size={config.batch_size} at {seq_len} tokens needs about {need / 2**30:.1f} GiB "
            f"more, but only {free / 2**30:.1f} GiB of GPU memory is free. Try a smaller batch_size "
            "(with grad_accum to keep the effective batch), gradient_checkpointing=True, "
            "or method='qlora' with a 4-bit base.")


def validation_loss(model: nn.Module, tokenized, pad_token_id: int, batch_size: int) -> float:
    """Token-weighted mean loss over the answer tokens of a tokenized split (kit.evaluate)."""
    from kit.evaluate import validation_loss as val_loss
    return val_loss(model, tokenized, pad_token_id, batch_size=batch_size)["loss"]


def _with_overrides(config: TrainConfig | None, overrides: dict) -> TrainConfig:
    """finetune(..., steps=10, r=4): TrainConfig fields and LoraSettings fields by name."""
    config = config or TrainConfig()
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    lora_keys = {f.name for f in dataclasses.fields(LoraSettings)}
    unknown = sorted(set(overrides) - train_keys - lora_keys)
    if unknown:
        raise ValueError(f"Unknown setting(s) {unknown}. TrainConfig fields: {sorted(train_keys)}; "
                         f"LoraSettings fields: {sorted(lora_keys)}.")
    lora = overrides.get("lora", config.lora)
    lora = dataclasses.replace(lora, **{k: v for k, v in overrides.items() if k in lora_keys})
    train = {k: v for k, v in overrides.items() if k in train_keys and k != "lora"}
    return dataclasses.replace(config, lora=lora, **train)


# ---------------------------------------------------------------------------- the loop
def finetune(model: nn.Module, tokenizer, data, method: str = "lora",
             config: TrainConfig | None = None, *, checkpoint_dir=None, accelerator=None,
             on_step=None, **overrides) -> FinetuneResult:
    """Fine-tune `model` on `data` (prompt/response DatasetDict, or already tokenized).

    method:    "full" | "lora" | "qlora" (a 4-bit base from load_model(..., quantization="nf4")).
    config:    a TrainConfig; keyword overrides win: finetune(m, tok, data, steps=10, r=4).
    A model that already has peft adapters keeps training them (method "lora"/"qlora").

    For longer runs (what `python -m kit finetune` uses):
    checkpoint_dir: write checkpoints there (every config.save_every steps, at the end, and
                 when interrupted with Ctrl-C) and resume from the newest one found.
    accelerator: an `accelerate.Accelerator` when several processes train together
                 (`accelerate launch`): each takes its own shard of the batches and the
                 gradients are averaged across processes, so all keep the same weights.
    on_step:     called with each step's record (a dict) after the step.
    """
    from peft import PeftModel
    from tqdm.auto import tqdm
    from kit import checkpoint
    from kit.data import batches

    config = _with_overrides(config, overrides)
    _check_config(method, config)
    prof = read_profile()
    amp = precision(prof)
    lr = config.lr or DEFAULT_LR[method]
    warmup = config.warmup_steps if config.warmup_steps is not None else config.steps // 10
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # ---- data: tokenize (loss on the answer tokens only) and an endless seeded batch stream
    train_set, val_set = tokenized_splits(data, tokenizer, config.max_length)
    seq_len = max(len(ids) for ids in train_set["input_ids"])

    # ---- model: choose what trains; seeding first makes the adapters' init reproducible
    torch.manual_seed(config.seed)
    if isinstance(model, PeftModel) and method != "full":
        pass  # continue training the adapters it has
    else:
        model = prepare_model(model, method, config.lora, config.gradient_checkpointing)
    check_fits(model, method, config, seq_len, prof)
    inner, rank, world, main = model, 0, 1, True
    if accelerator is not None:  # several processes: wrap for gradient averaging (DDP / FSDP)
        model = accelerator.prepare_model(model)
        rank, world = accelerator.process_index, accelerator.num_processes
        main = accelerator.is_main_process
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameters. A loaded adapter must be loaded "
                         "with load_adapter(..., is_trainable=True) to train it further.")
    device = params[0].device

    optimizer = make_optimizer(params, config.optimizer, lr, config.weight_decay, prof)
    scaler = torch.amp.GradScaler("cuda", enabled=amp["grad_scaling"])  # fp16 only: no underflow
    autocast = (lambda: torch.autocast("cuda", dtype=amp["autocast"])) if amp["autocast"] \
        else contextlib.nullcontext
    history = History(method=method, config=dataclasses.asdict(config) | {"lr": lr, "warmup_steps": warmup})

    # ---- resume: the newest checkpoint restores weights, optimizer, random state, history
    settings = {k: v for k, v in history.config.items()
                if k not in ("save_every", "keep_checkpoints", "stop_after")} | {"method": method,
                                                                                  "processes": world}
    start, last_checkpoint = 0, None
    found = checkpoint.checkpoints(checkpoint_dir) if checkpoint_dir else []
    if found:
        state = checkpoint.load(found[-1], inner, optimizer, scaler, settings)
        start, last_checkpoint = state["step"], str(found[-1])
        history.steps, history.evals = state["history"]["steps"], state["history"]["evals"]
        history.resumed_at = state["history"].get("resumed_at", []) + [start]
    stream = batches(train_set, config.batch_size, pad_id, seed=config.seed,
                     start=start * config.grad_accum, shard=(rank, world))
    if prof.device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def evaluate(step):
        if val_set is not None and config.eval_every:
            inner.eval()
            history.evals.append({"step": step, "val_loss": validation_loss(inner, val_set, pad_id,
                                                                              config.batch_size)})
            inner.train()

    def save(step):  # one process writes; the others wait until the files are complete
        nonlocal last_checkpoint
        if main:
            last_checkpoint = str(checkpoint.save(checkpoint_dir, step, inner, optimizer, scaler,
                                                  history.as_dict(), settings, config.keep_checkpoints))
        if accelerator is not None:
            accelerator.wait_for_everyone()

    model.train()
    if start == 0:
        evaluate(0)
    end = min(config.steps, start + config.stop_after) if config.stop_after else config.steps
    bar = tqdm(range(start, end), initial=start, total=config.steps, desc=f"{method} fine-tuning",
               disable=not (config.progress and main))
    done, rng_done = start, torch.get_rng_state()  # dropout's generator as step `done` left it
    try:
        for step in bar:
            t0 = time.perf_counter()
            # ---- learning rate for this step (set by hand, nanoGPT-style)
            step_lr = lr_at(step, lr, warmup, config.steps, config.schedule)
            for group in optimizer.param_groups:
                group["lr"] = step_lr

            # ---- forward and backward over grad_accum micro-batches
            step_loss, tokens, crc = 0.0, 0, 0
            for _ in range(config.grad_accum):
                batch = {k: v.to(device) for k, v in next(stream).items()}
                with autocast():
                    loss = model(**batch).loss  # the model shifts labels; -100 (prompt, pad) ignored
                scaler.scale(loss / config.grad_accum).backward()
                step_loss += loss.item() / config.grad_accum
                tokens += int(batch["attention_mask"].sum())
                crc = zlib.crc32(batch["input_ids"].cpu().numpy().tobytes(), crc)  # which data

            # ---- clip, step, zero
            if config.max_grad_norm:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

            # ---- record (with several processes: the mean loss, all tokens)
            if prof.device == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if accelerator is not None:
                step_loss = accelerator.reduce(torch.tensor(step_loss, device=device), "mean").item()
                tokens = int(accelerator.reduce(torch.tensor(tokens, device=device), "sum"))
            memory, history.memory_kind = peak_memory(prof)
            record = {"step": step + 1, "loss": step_loss, "lr": step_lr, "tokens": tokens,
                      "tokens_per_s": tokens / dt, "step_time": dt, "memory": memory, "batch_crc": crc}
            history.steps.append(record)
            done, rng_done = step + 1, torch.get_rng_state()
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{step_lr:.2e}")
            if config.eval_every and (done % config.eval_every == 0 or done == config.steps):
                evaluate(done)
            if on_step is not None:
                on_step(record)
            if checkpoint_dir and config.save_every and done % config.save_every == 0 and done < end:
                save(done)
    except KeyboardInterrupt:  # Ctrl-C: keep every finished step, then stop
        if checkpoint_dir and done > start:
            torch.set_rng_state(rng_done)  # forget an unfinished step's random draws
            save(done)
        raise
    if checkpoint_dir and (done > start or not found):
        save(done)

    inner.eval()
    return FinetuneResult(model=inner, history=history, finished=done >= config.steps,
                          checkpoint=last_checkpoint)
