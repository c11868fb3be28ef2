"""The checks of notebook 06 (choosing a method): ex06_N(answer, **facts) -> bool, printing the verdict."""
from __future__ import annotations

from kit.view.check.common import as_pair, close, is_number, verdict


def ex06_1(answer, recoloured_columns=None, reframed=(), largest_here=None, largest_there=None,
           decision_changes=None, setting=None) -> bool:
    if recoloured_columns is None:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    got = as_pair(answer)
    ok = (got is not None and isinstance(got[0], (list, tuple, set))
          and sorted(map(str, got[0])) == sorted(recoloured_columns) and got[1] is decision_changes)
    gpu, rank, try_gpu, try_rank = setting
    moved = "; ".join(f"{m} {largest_here[m]} -> {largest_there[m]}" for m in largest_here
                      if largest_here[m] != largest_there[m])
    return verdict(ok,
                   f"from r={rank} on {gpu} to r={try_rank} on {try_gpu}, the colour changes in "
                   f"{', '.join(recoloured_columns) or 'no column'}: the rank only enters what the adapters add, so "
                   f"the full fine-tuning columns cannot change colour. {len(reframed)} cells change frame: the "
                   "frame is the GPU's. The decision " + (f"changes: {moved}." if decision_changes else "stays."),
                   "compare the two size-table figures column by column: which methods does the rank enter "
                   "(full fine-tuning has no adapters)? Give the columns as a list, e.g. [\"lora\"], and "
                   "True/False for the decision: does any method's largest preset change?", answer)


def ex06_2(answer, longest=None, with_band=None, options=()) -> bool:
    if longest is None:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    got = as_pair(answer)

    def fine(value, key):   # the widget's longest choice that fits, up to the exact longest
        floor = max([o for o in options if o <= longest[key]], default=1)
        return is_number(value) and floor <= value <= longest[key]

    ok = got is not None and fine(got[0], "checkpointing") and fine(got[1], "no_checkpointing")
    return verdict(ok,
                   f"about {longest['checkpointing']:,} tokens with checkpointing and {longest['no_checkpointing']:,} "
                   "without. Without checkpointing every layer keeps all its intermediate activations for the "
                   "backward pass; with it, only each layer's input, and the rest is recomputed. Activations grow "
                   "with batch x length, so at batch 4 they, not the 4-bit weights, decide the length. With the "
                   f"estimator's error band as headroom: {with_band['checkpointing']:,} and "
                   f"{with_band['no_checkpointing']:,} tokens.",
                   "in the calculator set model llama-2-7b, method qlora, bits 4, rank 8, batch 4, GPU T4 and raise "
                   "seq len until it says 'does NOT fit': the answer is the longest that still fits, once with "
                   "checkpointing and once without, e.g. (4096, 1024).", answer)


def ex06_3(answer, lora_step_s: float, qlora_step_s: float, timing=None, study_step_s=None) -> bool:
    ratio = qlora_step_s / lora_step_s
    how = "slower than" if ratio > 1.05 else "faster than" if ratio < 0.95 else "about as fast as"
    parts = (" Timed apart on the same batch, QLoRA's forward pass took "
             f"{timing['qlora']['forward_s'] / timing['lora']['forward_s']:.2f}x LoRA's and its backward pass "
             f"{timing['qlora']['backward_s'] / timing['lora']['backward_s']:.2f}x." if timing else "")
    other = (f" The study's runs measured {study_step_s['qlora'] / study_step_s['lora']:.2f}x: one short run's "
             "ratio moves by 10% or more on a shared machine." if study_step_s else "")
    return verdict(close(answer, ratio, rel=0.05),
                   f"QLoRA took {ratio:.2f}x LoRA's time per step here ({how} LoRA). The adapters are the same; "
                   "the base is not: every 4-bit weight block is dequantized to the compute dtype before its "
                   "matrix product (lesson 05, section 1). One short run's ratio moves by several percent."
                   + parts + other,
                   "divide QLoRA's s/step by LoRA's in the overview table (section 4).", answer)
