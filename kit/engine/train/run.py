"""Setting up a run the loop can read straight through: data, checks, several processes,
checkpoints, early stopping (`start_run` returns the `Run`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass

import torch
from datasets import Dataset, DatasetDict
from torch import nn

from kit.arch import DEFAULT_LR
from kit.engine import checkpoint
from kit.engine.data import batches, pad_token_id, tokenize
from kit.engine.evaluate import validation_loss
from kit.engine.train.config import RESUMABLE, History, TrainConfig, check_config
from kit.engine.train.optim import make_optimizer, peak_memory, precision
from kit.engine.train.prepare import prepare_model
from kit.machine.device import DeviceProfile, profile as read_profile
from kit.machine.memory import estimate


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
