"""Small helpers every notebook uses: where to write, how to record results.

Each notebook's parameters cell holds `RUN_DIR = ""`. The runner (`python -m kit run`)
injects the run folder; run by hand, a notebook writes into `runs/interactive/`.
The last cell calls `record(...)`: a JSON file of results that tests and the report read.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from kit.files import REPO_ROOT, RUNS, write_json  # noqa: F401  (REPO_ROOT: the notebooks' paths)
from kit.machine.device import hardware  # noqa: F401  (nb.hardware() in every notebook)


def run_dir(value: str = "") -> Path:
    """The folder a notebook writes into (created if needed)."""
    folder = Path(value) if value else RUNS / "interactive"
    (folder / "results").mkdir(parents=True, exist_ok=True)
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    return folder


def _clean(value):
    """Make a value JSON-friendly (NaN -> None, tuples -> lists, dtypes -> names)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return _clean(value.item())
    if hasattr(value, "as_dict"):
        return _clean(value.as_dict())
    return str(value)


def record(name: str, results: dict, folder: Path | str) -> Path:
    """Write `results` as `<folder>/results/<name>.json` (with hardware and time)."""
    folder = run_dir(str(folder))
    payload = {"notebook": name, "hardware": hardware(),
               "recorded_at": time.strftime("%Y-%m-%d %H:%M:%S"), **_clean(results)}
    path = folder / "results" / f"{name}.json"
    write_json(path, payload, indent=2)
    print(f"results recorded in {path}")
    return path


def save_figure(fig, name: str, folder: Path | str) -> Path:
    """Save a matplotlib figure as PNG under `<folder>/figures/`."""
    path = run_dir(str(folder)) / "figures" / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def load_results(folder: Path | str) -> dict[str, dict]:
    """Every notebook's recorded results in a run folder, by notebook name."""
    out = {}
    for path in sorted((Path(folder) / "results").glob("*.json")):
        out[path.stem] = json.loads(path.read_text())
    return out
