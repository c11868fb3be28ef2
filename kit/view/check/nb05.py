"""The checks of notebook 05 (QLoRA): ex05_N(answer, **facts) -> bool, printing the verdict."""
from __future__ import annotations

from kit.view.check.common import close, run_first, verdict


def ex05_1(answer, steps: int | None = None, val_loss: dict | None = None,
           base_val_loss: dict | None = None) -> bool:
    if not val_loss or not base_val_loss:
        return run_first(answer)
    lower = min(val_loss, key=val_loss.get)
    other = next(k for k in val_loss if k != lower)
    started = min(base_val_loss, key=base_val_loss.get)
    gap_before = base_val_loss[other] - base_val_loss[lower]
    gap_after = val_loss[other] - val_loss[lower]
    if lower == started:
        reading = (f"the base that started lower stayed lower: the gap went from {gap_before:+.3f} before "
                   f"training to {gap_after:+.3f} after {steps} steps")
    else:
        reading = (f"although {started} started lower ({base_val_loss[started]:.3f} against "
                   f"{base_val_loss[lower]:.3f}): after {steps} steps the adapters had made up the "
                   "difference between the bases on this validation set")
    return verdict(str(answer).strip().lower() == lower,
                   f"{lower}: {val_loss[lower]:.3f} against {val_loss[other]:.3f}; {reading}. One run on a "
                   "few validation examples: a difference of a few hundredths is within noise.",
                   "compare the two validation losses after the steps (the last column printed); the "
                   'lower one wins: "nf4" or "fp4".', answer)


def ex05_2(answer, ranks: list | None = None, base_weight_mb: float | None = None,
           per_rank: dict | None = None) -> bool:
    if not per_rank or not ranks:
        return run_first(answer)
    small, big = per_rank[str(ranks[0])], per_rank[str(ranks[1])]
    ratio = lambda e: (e["gradients_mb"] + e["adam_mb"]) / base_weight_mb
    expected = ratio(big)
    return verdict(close(answer, expected, rel=0.1),
                   f"{expected:.2f} times: at r={ranks[1]} the model trains {big['trainable_share']:.2%} of "
                   f"its parameters ({big['trainable'] / small['trainable']:.1f}x r={ranks[0]}'s "
                   f"{small['trainable_share']:.2%}: adapters grow linearly with r), and their fp32 "
                   f"gradients ({big['gradients_mb']:.0f} MB) plus Adam's two moments ({big['adam_mb']:.0f} "
                   f"MB) take {expected:.2f}x the 4-bit base's {base_weight_mb:.0f} MB (r={ranks[0]}: "
                   f"{ratio(small):.2f}x). On a 135M model a large rank makes the training state the bigger "
                   "part; on a 7B model the base stays far larger. The activations barely move "
                   f"({small['activations_mb']:.0f} -> {big['activations_mb']:.0f} MB).",
                   f"add the gradients and the Adam state at r={ranks[1]} (MB) and divide by the base's "
                   "weight memory (printed last).", answer)


_DTYPES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}


def ex05_3(answer, optimizer: str, compute_dtype: str, grad_scaling: bool, here: dict) -> bool:
    try:
        opt, dtype = (str(a).replace("torch.", "").strip().lower() for a in answer)
    except (TypeError, ValueError):
        opt, dtype = None, None
    ok = opt == optimizer and _DTYPES.get(dtype, dtype) == compute_dtype
    return verdict(ok,
                   f"{optimizer} and {compute_dtype}{' with gradient scaling' if grad_scaling else ''}: on "
                   "CUDA 'auto' takes bitsandbytes' paged 8-bit AdamW, and a T4 (7.5) has no native bf16, so "
                   "each 4-bit layer dequantizes to fp16 and multiplies there, while the adapters stay fp32. "
                   f"Here ({here['device']}) the run used {here['optimizer']} in {here['compute_dtype']} at "
                   f"{here['step_s']:.2f} s per step: compare the median step time a T4 prints.",
                   "read the profile's `compute` line, and what pick_optimizer returns for a CUDA device; "
                   'answer as a pair, e.g. ("adamw_torch", "float32").', answer)


def ex05_4(answer, reached: bool | None = None, right: bool | None = None, forward_error: float | None = None,
           native: bool = False, line: str = "") -> bool:
    if reached is None:
        return run_first(answer)
    if not reached:
        what = ("no gradient reached the input: the fused bf16 kernel has no backward, so every 4-bit "
                "layer would cut the gradient to the layers below it")
    elif not right:
        what = ("a gradient reached the input, but the repacked bytes were read in the usual layout and "
                f"the forward was {forward_error:.2g} off: the layer computed with other weights")
    else:
        what = "the gradient reached the input and was right"
    where = ("This CPU has AVX512-BF16: bitsandbytes would do this on its own after any inference pass. "
             if native else "This CPU has no AVX512-BF16, so bitsandbytes never repacks here on its own. ")
    return verdict(bool(answer) == bool(reached) and isinstance(answer, bool),
                   f"{what}. {where}The kit keeps the repacking off every model it loads: {line}",
                   "read the first printed line: did the gradient reach the input (True or False)?", answer)
