"""A recipe's data, read and checked before any model loads."""
from __future__ import annotations

import warnings

from kit.engine.data import make_task
from kit.engine.formats import SkippedRowsWarning, load_hub, load_local


def _data(recipe: dict):
    """The recipe's data: your file, a hub dataset, or one of the kit's tasks."""
    columns = dict(prompt_column=recipe["prompt_column"], response_column=recipe["response_column"],
                   seed=recipe["seed"], skip_bad_rows=recipe["skip_bad_rows"])
    if recipe["data_file"]:
        return load_local(recipe["data_file"], **columns)
    if recipe["hub_dataset"]:
        return load_hub(recipe["hub_dataset"], **columns)
    n_test = max(recipe["eval_examples"], 1)
    return make_task(recipe["task"], n_train=recipe["n_train"], n_val=recipe["n_val"],
                     n_test=n_test, seed=recipe["seed"])


def read_data(recipe: dict, say=print) -> tuple:
    """(the data, the number of rows skipped), read before any model loads: a row that cannot
    be used stops the run here (or, with skip_bad_rows, is skipped and counted in one line)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedRowsWarning)
        data = _data(recipe)
    skipped = 0
    for w in caught:
        if isinstance(w.message, SkippedRowsWarning):
            say(str(w.message))
            skipped += w.message.count
        else:  # any other warning, shown as it would have been
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return data, skipped
