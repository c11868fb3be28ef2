"""The checks of notebook 00 (setup): ex00_N(answer, **facts) -> bool, printing the verdict."""
from __future__ import annotations

from kit.view.check.common import close, verdict


def ex00_1(answer, embedding_share: float | None = None) -> bool:
    if embedding_share is None:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    return verdict(close(answer, embedding_share, abs_tol=0.02),
                   f"{embedding_share:.0%} of tiny-llama is its embedding, which bitsandbytes does not "
                   "quantize: 4-bit only shrinks the few Linear weights that are left.",
                   "divide the embedding's parameters (49,152 x 64) by all parameters.", answer)


def ex00_2(answer, linear: int, other: int, measured_nf4_mb: float | None = None) -> bool:
    expected = (linear * (4 + 32 / 64) / 8 + other * 4) / 1e6
    note = (f" The measured footprint, {measured_nf4_mb:.1f} MB, is smaller: double quantization "
            "stores the scales in 8 bits (4.13 instead of 4.5 bits per weight)."
            if measured_nf4_mb else "")
    return verdict(close(answer, expected, rel=0.02), f"about {expected:.1f} MB.{note}",
                   "4.5 bits per Linear weight (4 + 32/64), 4 bytes for every other parameter; "
                   "MB = bytes / 1e6.", answer)


def ex00_3(answer, compute_dtype: str, grad_scaling: bool) -> bool:
    name = str(answer).replace("torch.", "").lower() if answer is not None else None
    aliases = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32"}
    return verdict(aliases.get(name, name) == compute_dtype,
                   f"{compute_dtype}{' with gradient scaling' if grad_scaling else ''}: a T4 (7.5) has no "
                   "native bf16, only emulation, so the policy reads the compute capability rather than "
                   "is_bf16_supported().",
                   "read the profile's `compute` line; the policy decides from the compute capability.",
                   answer)
