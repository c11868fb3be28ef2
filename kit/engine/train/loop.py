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

import time
import zlib

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kit.engine.data.tokens import IGNORE_INDEX
from kit.engine.train.config import FinetuneResult, TrainConfig, with_overrides
from kit.engine.train.optim import lr_at
from kit.engine.train.run import start_run

# ---------------------------------------------------------------------------- the loop
# The kit's loop and TRL's SFTTrainer on the same batches: the largest relative loss difference
# that still counts as the same computation. In float32 on a CPU the two differ by about 2e-5
# (the reference run of notebook 08): TRL scores the tokens with transformers' fused LM head,
# which sums the log-probabilities in another order than the model's own cross-entropy.
PARITY_TOLERANCE = 1e-4


def answer_loss(model, batch: dict) -> torch.Tensor:
    """The mean cross-entropy over the labelled tokens (labels -100: prompt and padding are
    not scored): the number `model(**batch).loss` gives, up to float rounding, for less work.
    The output layer turns each position into vocabulary-sized logits, yet only the positions
    that predict an answer token are scored: about 20 of the 77 of a batch of dates examples.
    transformers' `logits_to_keep` computes the logits at those positions only. A training step
    (forward and backward, batch of 8) of the bundled model on 2 CPU cores (AMD EPYC, AVX2) then
    takes 0.82 of the time for full fine-tuning (3.62 s against 4.42 s), 0.92 for LoRA (3.38 s
    against 3.70 s), 0.84 for QLoRA (benchmarks/bench_answer_loss.py, medians of 7 batches). The
    loop uses it with `answer_logits_only=True` (the study does); by default the loss is the
    model's own, bit for bit."""
    labels = batch["labels"][:, 1:]                                  # position t predicts token t + 1
    keep = (labels != IGNORE_INDEX).any(0).nonzero().squeeze(1)      # positions some row scores
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=keep).logits                       # (B, len(keep), vocab)
    return F.cross_entropy(logits.float().flatten(0, 1), labels[:, keep].flatten(),
                           ignore_index=IGNORE_INDEX)


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
                with run.autocast():                        # labels -100 (prompt, padding) not scored
                    loss = answer_loss(model, batch) if cfg.answer_logits_only else model(**batch).loss
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
