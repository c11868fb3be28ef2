"""Reading your files (jsonl, json, csv, tsv) or a hub dataset into train/validation/test splits,
with a damaged file or row named by file and line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from datasets import DatasetDict, load_dataset
from datasets.exceptions import DatasetGenerationError
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from kit.engine.formats.rows import FILE_KINDS, _rows
from kit.machine.models import hub_reachable

JSONL_HINT = ('Each line of a JSONL file must be one object like {"prompt": "...", '
              '"response": "..."}; a .json file may instead hold one list of such objects.')


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for label, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1:
            raise ValueError(f"{label} must be a number in [0, 1); got {f!r}. Use e.g. 0.1.")


def _reader_for(path: Path, prompt_column: str, response_column: str) -> tuple[str, dict]:
    """-> (the `datasets` builder name, its options) for the file's extension."""
    kind = FILE_KINDS.get(path.suffix.lower())
    if kind in ("JSONL", "JSON"):
        return "json", {}
    if kind in ("CSV", "TSV"):
        # converters=str keeps the two text columns exactly as written (pandas would turn
        # "007" into 7 and "3.10" into 3.1); keep_default_na=False keeps answers such as
        # "NA" or "null" as text, and an empty cell stays "" (a row that cannot be used).
        return "csv", {"delimiter": "\t" if kind == "TSV" else ",", "keep_default_na": False,
                       "converters": {prompt_column: str, response_column: str}}
    raise ValueError(f"path must end in .jsonl, .json, .csv or .tsv; got {path.name!r}. "
                     "Save your data as JSONL (one JSON object per line) or CSV with a header.")


def _json_problem(text: str) -> str | None:
    """What makes `text` unreadable as JSONL (or as one JSON list), e.g. 'line 3 is not
    valid JSON (...)'; None if every line parses to an object."""
    if text.lstrip().startswith("["):  # one JSON list of objects
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            return f"line {e.lineno} is not valid JSON ({e.msg})"
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                return f"item {i} of the list is not a JSON object"
        return None
    # split("\n"), not splitlines(): a JSON string may hold a raw \u2028, which splitlines
    # would cut, so the numbers are the file's own line numbers
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            return f"line {number} is not valid JSON ({e.msg})"
        if not isinstance(record, dict):
            return f"line {number} is not a JSON object"
    return None


def _read_error(path: Path, error: Exception) -> ValueError:
    """A clear ValueError for a file that `datasets` could not read. The file is scanned
    here, on failure only, to find the cause (an empty file, the first bad JSON line)."""
    kind = FILE_KINDS[path.suffix.lower()]
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines or text.strip() == "[]":
        return ValueError(f"{path} is empty. Give a file with at least a few examples.")
    if kind in ("CSV", "TSV") and len(lines) == 1:
        return ValueError(f"{path} is empty: it has a header line but no rows below it. "
                          "Add one example per row.")
    if kind in ("JSONL", "JSON"):
        problem = _json_problem(text)
        if problem:
            return ValueError(f"{path} {problem}. {JSONL_HINT}")
    reason = error.__cause__ or error  # the library wraps the parser's error
    hint = (JSONL_HINT if kind in ("JSONL", "JSON") else
            "The first line must name the columns and every row must have as many fields.")
    return ValueError(f"Could not read {path} as {kind}: {reason}. {hint}")


def _read_file(path: Path, prompt_column: str, response_column: str):
    """The whole file as one `datasets.Dataset`, every column it has."""
    builder, options = _reader_for(path, prompt_column, response_column)
    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()  # a local file reads in a moment: no bar between a command's lines
    try:
        return load_dataset(builder, data_files=str(path), split="train", **options)
    except (DatasetGenerationError, ValueError, StopIteration) as e:
        # The parser's error (pyarrow's or pandas', both ValueErrors) arrives bare or wrapped
        # in a DatasetGenerationError; an empty JSON file even gives StopIteration.
        raise _read_error(path, e) from None
    finally:
        if not bars_were_off:
            enable_progress_bars()


def _take_out(data, n: int, seed: int):
    """-> (the rest, n examples drawn from `data` with the library's seeded split)."""
    if n == 0:  # train_test_split refuses test_size=0
        return data, data.select([])
    parts = data.train_test_split(test_size=n, seed=seed)
    return parts["train"], parts["test"]


def _split(data, val_fraction: float, test_fraction: float, seed: int, source: str):
    """Cut a prompt/response Dataset into DatasetDict(train, validation, test).

    Sizes: round(n * fraction) for test and validation (so 0.1 of 30 is 3), the rest is
    train. They are passed to train_test_split as counts: given a float it takes
    ceil(fraction * n), and 0.1 * 30 is 3.0000000000000004 in floating point, so 4.
    The test split is drawn first, then validation from what is left."""
    n = len(data)
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    if n_test + n_val >= n:
        raise ValueError(f"{source} has only {n} examples: nothing left for training with "
                         f"val_fraction={val_fraction} and test_fraction={test_fraction}. "
                         "Use smaller fractions or more data.")
    rest, test = _take_out(data, n_test, seed)
    train, validation = _take_out(rest, n_val, seed)
    return DatasetDict(train=train, validation=validation, test=test)


def load_local(path, prompt_column: str = "prompt", response_column: str = "response",
               val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
               skip_bad_rows: bool | None = None):
    """Your own examples from a file -> DatasetDict(train, validation, test), in one of the
    three formats (the module docstring): columns prompt and response, or messages.

    Files: .jsonl (one JSON object per line), .json (the same, or one list of objects),
    .csv or .tsv (a header line naming the columns), read with `datasets.load_dataset`.
    `prompt_column`/`response_column` name your columns (e.g. prompt_column="question",
    response_column="answer"); other columns are ignored, numbers become text. Rows that
    cannot be used: see `skip_bad_rows` in the module docstring (an error names the file,
    the row and, for JSONL, the line). The split is seeded (`Dataset.train_test_split`): the
    same seed gives the same split."""
    _check_fractions(val_fraction, test_fraction)
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"path {str(path)!r} is not a file. Give the path of a .jsonl, .json, "
                         ".csv or .tsv file.")
    data = _read_file(path, prompt_column, response_column)
    rows = _rows(data, prompt_column, response_column, str(path), skip_bad_rows, path)
    return _split(rows, val_fraction, test_fraction, seed, str(path))


def _offline() -> bool:
    flags = (os.environ.get(v, "") for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def load_hub(dataset_id: str, prompt_column: str, response_column: str, split: str = "train",
             config: str | None = None, n: int | None = None, val_fraction: float = 0.1,
             test_fraction: float = 0.1, seed: int = 0, skip_bad_rows: bool | None = None):
    """A dataset from the Hugging Face hub via `datasets.load_dataset`, mapped to
    prompt/response and split like `load_local` (same column picking, same split).
    Needs the network: offline (no network, or HF_DATASETS_OFFLINE=1 / HF_HUB_OFFLINE=1)
    it fails at once with a ValueError. `n` keeps only the first n rows of `split`."""
    _check_fractions(val_fraction, test_fraction)
    if _offline() or not hub_reachable():
        raise ValueError(
            f"load_hub({dataset_id!r}) needs the Hugging Face hub, which is not reachable "
            "(no network, or HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set). Connect to the "
            "network (and unset those variables), or export the data to a JSONL/CSV file "
            "and use load_local(path, prompt_column=..., response_column=...).")
    try:
        data = load_dataset(dataset_id, config, split=split)
    except Exception as e:  # unknown id, private dataset, bad split ...
        raise ValueError(f"Could not load {dataset_id!r} (config={config!r}, split={split!r}) "
                         f"from the hub: {e}. Check the dataset id, config and split names "
                         "on its hub page.") from e
    if n is not None:
        data = data.select(range(min(n, len(data))))
    source = f"hub dataset {dataset_id!r}"
    rows = _rows(data, prompt_column, response_column, source, skip_bad_rows)
    return _split(rows, val_fraction, test_fraction, seed, source)
