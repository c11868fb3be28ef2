"""What every notebook's checks share: the verdict in plain words, a tolerant comparison,
the solution files, and `exercise`, which finds the check of a notebook's exercise."""
from __future__ import annotations

import importlib
import importlib.util
import math

from kit.files import REPO_ROOT

SOLUTIONS_DIR = REPO_ROOT / "solutions"


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


def check_of(notebook: str, number: int):
    """The check of exercise `number` of `notebook` ("01_full_finetuning" or "01"): ex01_<number>
    in kit/view/check/nb01.py."""
    return getattr(importlib.import_module(f"kit.view.check.nb{notebook[:2]}"), f"ex{notebook[:2]}_{number}")


def exercise(notebook: str, number: int, answer, facts: dict, namespace: dict,
             use_solution: bool = False) -> dict:
    """Check exercise `number` of `notebook`: -> {"answer", "facts", "ok"} (the check prints)."""
    if use_solution:
        try:
            answer = solution(notebook, number, namespace)
        except KeyError as e:   # the solution reads what the variation computed, and it did not run
            print(f"exercise {number}: the solution needs {e} from the exercise's variation "
                  "(set EXERCISES = True)")
            answer = None
    check = check_of(notebook, number)
    if not facts:                    # the variation did not run: a check that needs its facts waits
        try:
            return {"answer": answer, "facts": facts, "ok": check(answer)}
        except TypeError:
            print(f"exercise {number}: run its variation first (EXERCISES = True), then check")
            return {"answer": answer, "facts": facts, "ok": None}
    return {"answer": answer, "facts": facts, "ok": check(answer, **facts)}


def run_first(answer) -> bool:
    return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)


def as_pair(answer, n: int = 2):
    """`answer` as a tuple of n items, or None if it is not one."""
    try:
        items = tuple(answer)
    except TypeError:
        return None
    return items if len(items) == n and not isinstance(answer, str) else None


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
