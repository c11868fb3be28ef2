"""Reading saved files with a clear error: a missing, truncated or corrupt safetensors or JSON
file raises `DamagedFileError`, whose message names the file, what is wrong with it, and what
to do. Adapters, checkpoints and saved models are all read through here (kit.engine.adapters,
kit.engine.checkpoint, kit.machine.models); loading runs no code (safetensors and JSON only, no pickle).
Every JSON file the kit writes goes through `write_json` (atomic).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

# Where the kit is, and where everything it runs writes by default: runs/ of the clone; where the
# kit is installed as a package (no pyproject.toml beside it, as after pip install in Colab), runs/
# of the working directory.
REPO_ROOT = Path(__file__).resolve().parent.parent
RUNS = REPO_ROOT / "runs" if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd() / "runs"

# What to do about a damaged file, by what it holds (the `what` of read_tensors).
FIXES = {
    "adapter": "Re-save it from the trained model (save_adapter(model, path)), or copy it again "
               "from where it was saved.",
    "checkpoint": "Resuming skips a damaged checkpoint and starts from an older intact one; if "
                  "none is left, delete the checkpoint folder to start the run afresh.",
    "model": "Save the model again (save_full(model, path)), or copy the folder again; for a "
             "model in the kit's cache, delete its folder and load_model builds it again.",
    "file": "Write it again, or copy it again from where it came from.",
}

class DamagedFileError(ValueError):
    """A saved file is missing, truncated or corrupt. The message names the file and the fix;
    .path is the file (or folder), .reason what is wrong with it."""

    def __init__(self, message: str, path=None, reason: str | None = None):
        super().__init__(message)
        self.path, self.reason = path, reason


def damaged(path, reason: str, what: str) -> DamagedFileError:
    """The error for a damaged file holding `what` ("adapter", "checkpoint", "model", ...)."""
    fix = FIXES.get(what, FIXES["file"])
    return DamagedFileError(f"The {what} file {str(path)!r} is damaged: {reason}. {fix}", path, reason)


def _diagnose(path: Path) -> str | None:
    """What is wrong with a safetensors file, in words; None if the sizes look right."""
    if not path.is_file():
        return "it does not exist" if not path.exists() else "it is not a file"
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"it is {size} bytes long, too short for even the 8-byte header length (truncated)"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return (f"its header length says {n:,} bytes but only {size - 8:,} follow (truncated, "
                    "or not a safetensors file)")
        try:
            header = json.loads(f.read(n))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
                      default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "its header is not valid safetensors JSON (corrupt, or not a safetensors file)"
    expected = 8 + n + end
    if size < expected:
        return (f"it has {size:,} bytes where its header describes {expected:,} (truncated: a save "
                "or copy that stopped early)")
    if size > expected:
        return f"it has {size:,} bytes where its header describes {expected:,} (extra bytes: corrupt)"
    return None


def check_tensors(path, what: str = "file") -> None:
    """Check that `path` is a complete safetensors file, reading only its header (cheap);
    raise DamagedFileError naming the file and the fix if not. what: "adapter",
    "checkpoint", "model", ... (what the file holds: it chooses the fix)."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt"):  # parses the header, checks it covers the whole file
            pass
    except (OSError, SafetensorError) as e:
        raise damaged(path, _diagnose(path) or str(e), what) from e


def read_tensors(path, what: str = "file") -> dict[str, torch.Tensor]:
    """All tensors of the safetensors file `path` (on the CPU), by name. A missing,
    truncated or corrupt file raises DamagedFileError naming the file and the fix
    (what: "adapter", "checkpoint", "model", ...: what the file holds)."""
    path = Path(path)
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise damaged(path, _diagnose(path) or str(e), what) from e


def write_json(path, payload, indent: int = 1, default=None) -> Path:
    """Write `payload` as JSON to `path` whole or not at all: into a temporary file beside it,
    then renamed over it (a crash mid-write leaves the old file, never half a new one). The one
    JSON writer of the kit: results, run files, summaries, histories."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=indent, default=default))
    os.replace(tmp, path)
    return path


def _field(d: dict, dotted: str):
    for key in dotted.split("."):
        d = d.get(key) if isinstance(d, dict) else None
    return d


def read_json(path, what: str = "file", fields: dict | None = None) -> dict:
    """The JSON object in `path`, with `fields` ({"a.b": type}) present and of that type;
    DamagedFileError (naming the file) if it is missing, invalid JSON or lacks a field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise damaged(path, f"it cannot be read ({e.strerror or e})", what) from e
    except ValueError as e:  # invalid JSON or not UTF-8
        raise damaged(path, f"it is not valid JSON ({e})", what) from e
    if not isinstance(data, dict):
        raise damaged(path, f"it holds a JSON {type(data).__name__}, not an object", what)
    wrong = []
    for key, kind in (fields or {}).items():  # "history.steps" is not named again if "history" is
        if not isinstance(_field(data, key), kind) and key.split(".")[0] not in wrong:
            wrong.append(key)
    if wrong:
        raise damaged(path, f"it lacks {', '.join(wrong)} (or they have the wrong type)", what)
    return data
