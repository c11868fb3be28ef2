"""Exercise checks: every exercise of every lesson has a cell in its notebook, and a check here
that says plainly what is right and what is not.

    facts = {"val_losses": ...}            # what the notebook (or the exercise's variation) measured
    answer = None                          # TODO: your answer
    exercises[2] = check.exercise("01_full_finetuning", 2, answer, facts, globals(), SOLUTIONS)

`exercise` calls the check `ex01_2(answer, **facts)`, which compares the answer with the
measured facts (so it holds on any machine), prints a verdict in plain words and returns
{"answer", "facts", "ok"} for the notebook's results. The solutions live apart from the
notebooks, in solutions/<notebook>.py; with SOLUTIONS = True (what the tests run) the cell
takes its answer from there.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

SOLUTIONS_DIR = Path(__file__).resolve().parent.parent / "solutions"


def verdict(ok: bool, right: str, wrong: str, answer=None) -> bool:
    """Print the verdict in plain words; return it. An unanswered exercise is not right."""
    if answer is None:
        print("not answered yet: replace `None` with your answer and run the cell again.")
        return False
    print(("right: " + right) if ok else ("not yet: " + wrong))
    return bool(ok)


def close(answer, expected: float, rel: float = 0.05, abs_tol: float = 0.0) -> bool:
    """A number within `rel` (relative) or `abs_tol` of the expected value."""
    try:
        return math.isclose(float(answer), float(expected), rel_tol=rel, abs_tol=abs_tol)
    except (TypeError, ValueError):
        return False


def solution(notebook: str, number: int, namespace: dict):
    """The solution of exercise `number` of `notebook` ("01_full_finetuning"), computed by
    solutions/<notebook>.py from the notebook's variables (`namespace`: its globals())."""
    path = SOLUTIONS_DIR / f"{notebook}.py"
    if not path.is_file():
        raise FileNotFoundError(f"No solutions file {path}: the solutions ship with the kit's "
                                "repository (solutions/), not with a pip install.")
    spec = importlib.util.spec_from_file_location(f"solutions_{notebook}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, f"ex{number}")(namespace)


def exercise(notebook: str, number: int, answer, facts: dict, namespace: dict,
             use_solution: bool = False) -> dict:
    """Check exercise `number` of `notebook`: -> {"answer", "facts", "ok"} (the check prints)."""
    if use_solution:
        answer = solution(notebook, number, namespace)
    ok = globals()[f"ex{notebook[:2]}_{number}"](answer, **facts)
    return {"answer": answer, "facts": facts, "ok": ok}


# ============================================================================ 00 · setup
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
