"""How one training step's memory divides across N GPUs: DDP and FSDP.

Start from `kit.machine.memory.estimate` for ONE GPU's share of the work: `batch_size` is the number
of examples each GPU takes per forward pass. Then:

DDP (data parallel, torch.nn.parallel.DistributedDataParallel). Every GPU holds a whole
replica: weights, gradients, optimizer states, and the activations of its own batch. After
backward the gradients are averaged across GPUs (an all-reduce), so every replica takes the
same optimizer step and the copies stay identical. Memory per GPU = the single-GPU estimate,
whatever N is: more GPUs buy examples per second, not room.

FSDP (fully sharded data parallel, FULL_SHARD; the idea of ZeRO stage 3). Each GPU keeps
only 1/N of the weights (with their quantization constants), of the gradients and of the
optimizer states. Just before a decoder layer runs, its full weights are gathered from all
GPUs (an all-gather) and freed after; in backward the layer is gathered again, and its full
gradient exists until it is reduce-scattered back into shards. Activations, logits and the
backward workspace belong to each GPU's own batch and do not divide.

    per GPU (DDP)  = W + Q + G + O + act + logits + ws                   (the estimate)
    per GPU (FSDP) = (W + Q + G + O) / N + layer(W + Q + G) + act + logits + ws   (N > 1)

Simplifications, stated so they can be checked: the gathered layer is counted once, in the
bytes the weights are stored in (FSDP prefetching the next layer can hold two at a time;
mixed precision can gather in 16 bits instead); the embeddings and the output head are
sharded like the rest; communication buffers are not counted. PyTorch's DDP by default also
keeps a second copy of the gradients in its communication buckets
(`gradient_as_bucket_view=False`); `bucket_copy=True` counts it.
"""
from __future__ import annotations

import dataclasses
import math

from kit.arch import ARCHS, GPUS, METHOD_NAMES, METHODS, Arch, gpu_bytes, resolve_arch
from kit.machine import memory as M

STRATEGIES = ("ddp", "fsdp")
SHARDED = ("weights", "quant_constants", "gradients", "optimizer")  # divide by N under FSDP
PER_BATCH = ("activations", "logits", "workspace")                  # each GPU's own batch
PARTS = SHARDED + PER_BATCH + ("gathered_layer", "bucket_copy")      # the keys of per_gpu()

# ---------------------------------------------------------------------------- checks
def _check_gpus(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number of GPUs >= 1; got {value!r}. "
                         f"Example: {name}=8.")
    return value


def _check_strategy(strategy) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}; got {strategy!r}. "
                         "'ddp' replicates the model on every GPU, 'fsdp' shards it.")
    return strategy


def _check_method(method) -> dict:
    """The GPU settings of the three methods (kit.arch.METHODS: full AMP, LoRA on a 16-bit
    base, QLoRA on a 4-bit base)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHOD_NAMES)}; got {method!r}. "
                         "(full = mixed precision, lora = 16-bit base, qlora = 4-bit base; for other "
                         "settings call kit.machine.memory.estimate and pass its result to per_gpu.)")
    return METHODS[method].gpu_estimate


def _arch_of(est: M.Estimate, arch) -> Arch:
    if arch is not None:
        return resolve_arch(arch)
    name = est.settings.get("arch")
    if name not in ARCHS:
        raise ValueError(f"arch is needed: this estimate's architecture {name!r} is not a preset of "
                         "kit.arch.ARCHS. Pass the same arch you gave kit.machine.memory.estimate, e.g. "
                         "per_gpu(est, 8, 'fsdp', arch=model.config).")
    return ARCHS[name]


# ---------------------------------------------------------------------------- one layer
def layer_share(est: M.Estimate, arch=None) -> dict:
    """Bytes of ONE decoder layer's weights, quantization constants and gradients, at the
    estimate's settings: the estimate of a model with one more layer, minus this one."""
    if not isinstance(est, M.Estimate):
        raise ValueError(f"est must be a kit.machine.memory.Estimate (from kit.machine.memory.estimate); got {type(est).__name__}.")
    a = _arch_of(est, arch)
    settings = {k: v for k, v in est.settings.items() if k != "arch"}
    bigger = M.estimate(dataclasses.replace(a, num_hidden_layers=a.num_hidden_layers + 1), **settings)
    this = M.estimate(a, **settings)
    return {k: getattr(bigger, k) - getattr(this, k) for k in ("weights", "quant_constants", "gradients")}


# ---------------------------------------------------------------------------- per GPU
def per_gpu(est: M.Estimate, gpus: int, strategy: str = "ddp", arch=None,
            bucket_copy: bool = False) -> dict:
    """Bytes each of `gpus` GPUs holds at the peak of one training step.

    est:       kit.machine.memory.estimate(...) for one GPU's batch (batch_size = examples per GPU)
    gpus:      how many GPUs train together (>= 1)
    strategy:  "ddp" (every GPU a full replica) or "fsdp" (FULL_SHARD: weights, gradients and
               optimizer states divided by N, one decoder layer gathered at a time)
    arch:      needed only when the estimate was made from a custom config, not a preset name
    bucket_copy: DDP only: count the second copy of the gradients that PyTorch's DDP keeps in
               its communication buckets by default (gradient_as_bucket_view=False)
    Returns {part: bytes} for every name in PARTS, plus "total".
    """
    if not isinstance(est, M.Estimate):
        raise ValueError(f"est must be a kit.machine.memory.Estimate (from kit.machine.memory.estimate); got {type(est).__name__}.")
    n = _check_gpus("gpus", gpus)
    _check_strategy(strategy)
    out = {part: getattr(est, part) for part in SHARDED + PER_BATCH}
    out["gathered_layer"] = 0
    out["bucket_copy"] = est.gradients if (bucket_copy and strategy == "ddp" and n > 1) else 0
    if strategy == "fsdp" and n > 1:          # one GPU has nothing to shard or gather
        for part in SHARDED:
            out[part] = math.ceil(out[part] / n)   # FSDP pads the flat shards to divide evenly
        out["gathered_layer"] = sum(layer_share(est, arch).values())
    out["total"] = sum(out[part] for part in PARTS)
    return out


def estimate_per_gpu(arch, method: str, gpus: int, strategy: str = "ddp", **estimate_kwargs) -> dict:
    """per_gpu for one of the three methods at its GPU settings (kit.arch.METHODS: full amp,
    LoRA 16-bit, QLoRA 4-bit);
    estimate_kwargs go to kit.machine.memory.estimate (batch_size per GPU, seq_len, r, ...)."""
    settings = _check_method(method) | estimate_kwargs
    est = M.estimate(arch, **settings)
    return per_gpu(est, gpus, strategy, arch=None if isinstance(arch, str) else arch)


def smallest_gpu_count(arch, method: str, gpu="A100-80GB", strategy: str = "fsdp",
                       max_gpus: int = 8, **estimate_kwargs) -> int | None:
    """The fewest GPUs (1 .. max_gpus) on which each GPU's share fits `gpu`; None if even
    max_gpus do not suffice. "How many A100-80GB does full fine-tuning of a 70B need under
    FSDP?" is smallest_gpu_count("llama-2-70b", "full", "A100-80GB", "fsdp", max_gpus=64)."""
    usable = gpu_bytes(gpu)
    _check_strategy(strategy)
    top = _check_gpus("max_gpus", max_gpus)
    for n in range(1, top + 1):
        if estimate_per_gpu(arch, method, n, strategy, **estimate_kwargs)["total"] <= usable:
            return n
    return None


def table(archs, methods=METHOD_NAMES, gpu_counts=(1, 2, 4, 8), strategies=STRATEGIES,
          **estimate_kwargs) -> list[dict]:
    """One row per (arch, method, strategy, gpus): every part of per_gpu in bytes, plus the
    model's parameter count. Plain records for a table or kit.view.plots.scaling_bars."""
    rows = []
    for arch in archs:
        for method in methods:
            settings = _check_method(method) | estimate_kwargs
            est = M.estimate(arch, **settings)
            for strategy in strategies:
                for n in gpu_counts:
                    share = per_gpu(est, n, strategy, arch=None if isinstance(arch, str) else arch)
                    rows.append({"arch": est.settings["arch"], "params": est.params, "method": method,
                                 "strategy": strategy, "gpus": n, **share})
    return rows


def breakdown(arch="llama-2-70b", gpus: int = 8, strategy: str = "fsdp", **estimate_kwargs) -> dict:
    """What the notebook's widget draws: {method: per_gpu(...)} for the three methods of one
    model, at `gpus` GPUs under `strategy`."""
    _check_gpus("gpus", gpus)
    _check_strategy(strategy)
    resolve_arch(arch)
    return {method: estimate_per_gpu(arch, method, gpus, strategy, **estimate_kwargs) for method in METHOD_NAMES}


def effective_batch(batch_size: int, grad_accum: int = 1, processes: int = 1) -> int:
    """Examples behind one optimizer step: batch_size x grad_accum x processes."""
    for name, v in (("batch_size", batch_size), ("grad_accum", grad_accum), ("processes", processes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a whole number >= 1; got {v!r}.")
    return batch_size * grad_accum * processes


# GPUs whose usable memory the breakdown's text and figure mark as lines
GPU_LINES = ("A100-80GB", "T4")


def breakdown_text(parts: dict, model: str, gpus: int, strategy: str) -> str:
    """`breakdown`'s answer as a small table: GB per GPU, part by part, and what fits where."""
    names = ("weights", "quant_constants", "gradients", "optimizer", "gathered_layer", "activations",
             "logits", "workspace", "total")
    lines = [f"{model}, {gpus} GPU{'s' if gpus > 1 else ''}, {strategy.upper()}: GB per GPU",
             f"{'part':16s}" + "".join(f"{m:>10s}" for m in parts)]
    for name in names:
        lines.append(f"{name.replace('_', ' '):16s}" + "".join(f"{parts[m][name] / 1e9:10.2f}" for m in parts))
    for gpu in GPU_LINES:
        fits = ", ".join(f"{m} {'yes' if parts[m]['total'] <= GPUS[gpu] else 'no'}" for m in parts)
        lines.append(f"fits one {gpu} ({GPUS[gpu] / 1e9:.0f} GB usable): {fits}")
    return "\n".join(lines)
