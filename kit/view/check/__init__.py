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
from kit.view.check.common import (check_of, exercise,  # noqa: F401  (check.exercise in every notebook)
                                   solution)
