"""Your own data: the formats people have, read with `datasets`, checked row by row.

Three formats, recognised by their columns (`load_local`, `load_hub`):

    conversation   {"messages": [{"role": "system" | "user" | "assistant", "content": ...}, ...]}
                   several turns, an optional system prompt first; the loss covers every
                   assistant turn and nothing else (kit.engine.data.encode_conversation)
    alpaca         {"instruction": ..., "input": ... (optional), "output": ...}
                   -> prompt = instruction (+ a blank line + input), response = output
    prompt/response  two columns you name (prompt_column, response_column)

A row that cannot be used (a turn without a role, an unknown role, a system turn after the
first, an empty content, a conversation that does not end on an assistant turn; an empty or
missing prompt or response) is never dropped silently. `skip_bad_rows`:
    None (default)  a malformed conversation is an error naming the file, row, line and
                    field; rows with an empty prompt or response are skipped with a warning
    False           every row that cannot be used is such an error (python -m kit finetune)
    True            every such row is skipped, with a SkippedRowsWarning that counts them
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset
from datasets.exceptions import DatasetGenerationError
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from kit.errors import DataError
from kit.machine.models import hub_reachable

FORMATS = ("conversation", "alpaca", "prompt/response")
ROLES = ("system", "user", "assistant")


SKIP_HINT = ("To skip the rows that cannot be used instead: skip_bad_rows=True (python -m kit "
             "finetune: --skip_bad_rows true).")


class SkippedRowsWarning(UserWarning):
    """Rows of your data that cannot be used were skipped: .count of .total rows."""

    def __init__(self, message: str, count: int = 0, total: int = 0):
        super().__init__(message)
        self.count, self.total = count, total


class _Unusable(Exception):
    """Why one row cannot be used: the field at fault ("messages[1].role"; "" for the whole
    row) and the reason, with the fix."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason

    def at(self, where: str) -> str:
        return f"{where}, {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


# =============================================================================== reading a file
# Your file is read by `datasets.load_dataset` (the "json" or "csv" builder), so it gets
# the library's parsers and its cache; the split is the library's seeded
# `Dataset.train_test_split`. What the kit adds: one place that picks the two columns,
# checks every row (naming the line of one that cannot be used), and turns the library's
# parse errors into messages that name the file, the line and the fix.
FILE_KINDS = {".jsonl": "JSONL", ".json": "JSON", ".csv": "CSV", ".tsv": "TSV"}
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


def _has_text(value) -> bool:
    return value is not None and bool(str(value).strip())


def _pair(prompt, response, names: tuple[str, str]) -> tuple[str, str]:
    """One prompt/response row as two strings (numbers in a JSON file become text)."""
    for name, value in zip(names, (prompt, response)):
        if not _has_text(value):
            raise _Unusable(name, f"missing or empty; every row needs both {names[0]} and {names[1]}.")
    return str(prompt), str(response)


def _pairs(data, prompt_column: str, response_column: str, source: str) -> list:
    """Each row of the user's two columns: a (prompt, response) pair, or why it cannot be used."""
    for label, col in (("prompt_column", prompt_column), ("response_column", response_column)):
        if col not in data.column_names:
            raise ValueError(f"{label}={col!r} is not a column of {source}; its columns are "
                             f"{data.column_names}. Pass {label}='<one of those>'.")
    names = (prompt_column, response_column)
    return [_checked(_pair, p, r, names) for p, r in zip(data[prompt_column], data[response_column])]


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


# =============================================================================== the formats
def detect(columns, prompt_column: str = "prompt", response_column: str = "response") -> str:
    """Which format a table with these columns holds (FORMATS)."""
    columns = set(columns)
    if "messages" in columns:
        return "conversation"
    if {"instruction", "output"} <= columns and not {prompt_column, response_column} <= columns:
        return "alpaca"
    return "prompt/response"


def _turns(messages) -> list[dict]:
    """The conversation as a clean list of {"role", "content"} turns; _Unusable if malformed."""
    if not isinstance(messages, list) or not messages:
        raise _Unusable("", "'messages' must be a non-empty list of turns like "
                        '{"role": "user", "content": "..."}; got ' f"{type(messages).__name__}.")
    turns = []
    for i, turn in enumerate(messages):
        field = f"messages[{i}]"
        role = turn.get("role") if isinstance(turn, dict) else None
        if role is None:
            raise _Unusable(field, f"the turn has no 'role'. Give each turn a role, one of {list(ROLES)}.")
        if role not in ROLES:
            raise _Unusable(f"{field}.role", f"unknown role {role!r}. Use one of {list(ROLES)}.")
        if role == "system" and i > 0:
            raise _Unusable(f"{field}.role", "a 'system' turn may only come first (it sets up the "
                            "conversation); move it to the start or make it a user turn.")
        content = turn.get("content")
        if not isinstance(content, str) or not content.strip():
            raise _Unusable(f"{field}.content", f"the {role} turn is empty. Every turn needs text.")
        turns.append({"role": role, "content": content})
    if turns[-1]["role"] != "assistant":
        raise _Unusable("", f"the conversation ends on a {turns[-1]['role']} turn; it must end on an "
                        "assistant turn (the answer to learn). Drop the last turn or add the answer.")
    if not any(t["role"] == "user" for t in turns):
        raise _Unusable("", "the conversation has no user turn: there is nothing to answer.")
    return turns


def check_conversation(messages, row: int, source: str = "the data") -> list[dict]:
    """The conversation as a clean list of {"role", "content"} turns; a ValueError naming the
    row and the field if it is malformed."""
    try:
        return _turns(messages)
    except _Unusable as problem:
        raise DataError(problem.at(f"{source}, row {row}")) from None


def _checked(fn, *args):
    """fn(*args), or the _Unusable it raised (the row is then dropped or reported)."""
    try:
        return fn(*args)
    except _Unusable as problem:
        return problem


def _jsonl_lines(path: Path | None) -> list[int] | None:
    """The line of each row of a JSONL file (`datasets` skips blank lines); None for other data."""
    if path is None or FILE_KINDS[path.suffix.lower()] not in ("JSONL", "JSON"):
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("["):  # one JSON list: its rows are items, not lines
        return None
    return [number for number, line in enumerate(text.split("\n"), 1) if line.strip()]


def _place(index: int, lines: list[int] | None, short: bool = False) -> str:
    """Row `index` (0-based) for the user: 'row 3 (line 4)' in a JSONL file ('line 4' if
    short), else 'row 3'."""
    if lines and short:
        return f"line {lines[index]}"
    return f"row {index + 1}" + (f" (line {lines[index]})" if lines else "")


def _usable(checked: list, source: str, path: Path | None, skip: bool) -> list:
    """The rows that can be used. A row that cannot is an error naming its place (skip
    False), or is left out and counted in a SkippedRowsWarning (skip True)."""
    bad = [(i, c) for i, c in enumerate(checked) if isinstance(c, _Unusable)]
    good = [c for c in checked if not isinstance(c, _Unusable)]
    if not bad:
        return good
    lines = _jsonl_lines(path)
    index, first = bad[0]
    if not skip:
        raise DataError(f"{first.at(f'{source}, {_place(index, lines)}')} {SKIP_HINT}")
    first_at = first.at(_place(index, lines, short=True))
    if not good:
        raise DataError(f"{source} has no examples: none of its {len(checked)} rows can be used. "
                        f"The first: {first_at} Check the file and the column names.")
    warnings.warn(SkippedRowsWarning(
        f"{source}: skipped {len(bad)} of {len(checked)} rows that cannot be used (first: "
        f"{first_at})", len(bad), len(checked)), stacklevel=4)   # points at load_local's caller
    return good


def _conversations(data, source: str):
    """-> Dataset with one column, messages, every row checked (a malformed one is an error)."""
    return _rows(data, "prompt", "response", source, skip_bad_rows=False)


def _alpaca(data) -> list:
    """Alpaca records -> prompt/response: the instruction, and the input after a blank line."""
    inputs = data["input"] if "input" in data.column_names else [None] * len(data)
    prompts = [f"{ins}\n\n{inp}" if _has_text(inp) and _has_text(ins) else ins
               for ins, inp in zip(data["instruction"], inputs)]
    return [_checked(_pair, p, r, ("instruction", "output")) for p, r in zip(prompts, data["output"])]


def _rows(data, prompt_column: str, response_column: str, source: str,
          skip_bad_rows: bool | None = None, path: Path | None = None):
    """The file's table in the kit's columns: messages (a conversation) or prompt, response;
    `path` (the file, if it is one) gives the line of a row that cannot be used."""
    if len(data) == 0:
        raise ValueError(f"{source} is empty. Give a file with at least a few examples.")
    kind = detect(data.column_names, prompt_column, response_column)
    if kind == "conversation":
        checked = [_checked(_turns, m) for m in data["messages"]]
    elif kind == "alpaca":
        checked = _alpaca(data)
    else:
        checked = _pairs(data, prompt_column, response_column, source)
    skip = kind != "conversation" if skip_bad_rows is None else skip_bad_rows  # the default
    rows = _usable(checked, source, path, skip)
    if kind == "conversation":
        return Dataset.from_dict({"messages": rows})
    return Dataset.from_dict({"prompt": [p for p, _ in rows], "response": [r for _, r in rows]})
