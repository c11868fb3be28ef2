"""Does it fit? A method, a model and a GPU: the estimate against the GPU's usable memory.
"""
from __future__ import annotations

from kit.arch import METHOD_NAMES, METHODS, by_size, gpu_bytes, param_count
from kit.machine.memory.estimator import Estimate, estimate, estimate_settings
from kit.machine.memory.ledger import GB, MB


def fits(est: Estimate, gpu) -> bool:
    """Does the estimate fit on `gpu` (a name in kit.arch.GPUS or a number of bytes)?"""
    return est.total <= gpu_bytes(gpu)


def largest_model_that_fits(method: str, gpu, **kwargs) -> str | None:
    """The preset with the most parameters whose estimate fits on `gpu` (None if none does)."""
    best = None
    for name in by_size():
        if fits(estimate(name, method, **kwargs), gpu):
            best = name
    return best


def gpu_fit(model="llama-2-7b", method: str = "qlora", bits: int | None = None, rank: int = 8,
            batch_size: int = 1, seq_len: int = 512, gradient_checkpointing: bool = True,
            gpu: str = "T4") -> dict:
    """Does one fine-tuning step fit on a GPU? (what notebook 06's calculator shows)

    The estimate for the settings, the GPU's usable memory (kit.arch.GPUS) and, for each method
    at its usual width (full AMP, LoRA 16-bit, QLoRA 4-bit), the largest preset of
    kit.arch.ARCHS that fits with the same rank, batch and length. model: a preset name, an
    Arch or a transformers config.
    -> {"settings", "estimate" (bytes, Estimate.as_dict()), "params", "trainable", "total_gb",
        "gpu_gb", "fits", "headroom_gb", "largest" {method: {"name", "params"}}}"""
    usable = gpu_bytes(gpu)
    common = dict(r=rank, batch_size=batch_size, seq_len=seq_len,
                  gradient_checkpointing=gradient_checkpointing)
    est = estimate(model, **common, **estimate_settings(method, bits))
    largest = {}
    for m in METHOD_NAMES:
        name = largest_model_that_fits(m, gpu, **common, **{k: v for k, v in estimate_settings(m).items()
                                                            if k != "method"})
        largest[m] = {"name": name, "params": param_count(name) if name else None}
    name = model if isinstance(model, str) else getattr(model, "name", "custom")
    bits = METHODS[method].bits[0] if bits is None else bits
    return {"settings": dict(model=name, method=method, bits=bits, rank=rank, batch_size=batch_size,
                             seq_len=seq_len, gradient_checkpointing=gradient_checkpointing, gpu=gpu),
            "estimate": est.as_dict(), "params": est.params, "trainable": est.trainable,
            "total_gb": est.total / GB, "gpu_gb": usable / GB, "fits": est.total <= usable,
            "headroom_gb": (usable - est.total) / GB, "largest": largest}


def gpu_fit_text(calc: dict) -> str:
    """`gpu_fit`'s answer in words, component by component (MB)."""
    s, e = calc["settings"], calc["estimate"]
    parts = ", ".join(f"{k.replace('_', ' ')} {e[k] / MB:,.0f} MB" for k in
                      ("weights", "quant_constants", "gradients", "optimizer", "activations", "logits", "workspace")
                      if e.get(k))
    verdict = "fits" if calc["fits"] else "does NOT fit"
    largest = "; ".join(f"{m}: {v['name'] or 'nothing'}" for m, v in calc["largest"].items())
    return (f"{s['model']} ({calc['params'] / 1e9:.2f}B), {s['method']} {s['bits']}-bit, r={s['rank']} "
            f"({calc['trainable']:,} trainable): {calc['total_gb']:.2f} GB -> {verdict} on {s['gpu']} "
            f"({calc['gpu_gb']:.0f} GB usable, headroom {calc['headroom_gb']:+.2f} GB)\n  {parts}\n"
            f"  largest preset that fits on {s['gpu']}: {largest}")
