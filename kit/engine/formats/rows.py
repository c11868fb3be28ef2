"""Making each row an example: which format a table holds, conversations checked turn by turn,
Alpaca records and prompt/response columns turned into the kit's two shapes, unusable rows
named or skipped and counted.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from datasets import Dataset

from kit.errors import DataError

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
