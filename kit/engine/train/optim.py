"""The learning-rate schedule, the optimizer, and the precision the device policy asks for.
"""
from __future__ import annotations

import math
import resource
import sys

import torch

from kit.arch import OPTIMIZERS
from kit.machine.device import DeviceProfile


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
