"""The checks of notebook 09 (the field guide): ex09_N(answer, **facts) -> bool, printing the verdict."""
from __future__ import annotations

from kit.view.check.common import close, verdict


def ex09_1(answer, found: list) -> bool:
    return verdict(answer in found,
                   f"{answer!r}: with its end of turn masked the example never shows the model where an "
                   "answer stops, so it learns to go on writing. It is what a collator that masks every "
                   "label equal to the pad id does when the pad token is the end-of-turn token.",
                   "run dg.check_labels([row], tok) and give the name of the finding it returns "
                   f"(one of {found})." if found else "run dg.check_labels([row], tok).", answer)


def ex09_2(answer, four_by_two: float, eight_by_one: float) -> bool:
    further = eight_by_one > four_by_two
    return verdict(answer is not None and bool(answer) == further,
                   f"{'further' if further else 'not further'}: {eight_by_one:.2e} with 8 micro-batches "
                   f"of 1 against {four_by_two:.2e} with 4 of 2. A mean of micro-batch means gives every "
                   "micro-batch the same weight whatever its number of answer tokens; the smaller the "
                   "micro-batches, the more their token counts differ, and dividing the summed token "
                   "losses by the step's token count removes the difference in both cases.",
                   "print eight_by_one beside accumulation['mean of micro-batch means'].", answer)


def ex09_3(answer, fits_without: int, fits_with: int, gpu: str) -> bool:
    return verdict(close(answer, fits_without, abs_tol=0.5),
                   f"{fits_without or 'none'} tokens without gradient checkpointing, against "
                   f"{fits_with or 'none'} with it, on a {gpu}: without checkpointing every layer keeps "
                   "its activations for the backward pass, and they grow with the sequence.",
                   "estimate each length with gradient_checkpointing=False and keep those that fit "
                   "(M.fits); the answer is the longest, 0 if none.", answer)
