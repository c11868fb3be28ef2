"""The study's records: a run's file read back, the wall clock kept across resumed calls, the
settings as JSON, the commit that recorded them, and a run's best weights kept in memory until
the run ends (kit.study.run and kit.study.variants share them)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from pathlib import Path

import torch

from kit.files import REPO_ROOT, read_json, write_json


def read_record(path: Path):
    """The JSON in `path`, None if there is none yet (a damaged file raises, naming it)."""
    return read_json(path, "study") if path.exists() else None


def clock(out: Path, started: list, new_call: bool = False) -> dict:
    """Add the wall time since the last entry to <out>/wall.json, after every run, so a study
    stopped and resumed (over several sessions) still adds up to its true wall time; `calls`
    counts the commands that worked on it. started: [perf_counter at the last entry]."""
    now = time.perf_counter()
    wall = read_record(out / "wall.json") or {"wall_s": 0.0, "calls": 0}
    wall = {"wall_s": wall["wall_s"] + now - started[0], "calls": wall["calls"] + new_call}
    started[0] = now
    write_json(out / "wall.json", wall)
    return wall


def open_folder(out: Path, cfg, what: str = "study") -> list:
    """<out>/runs made, <out>/settings.json checked against `cfg` (a folder that holds another
    design is refused: its runs would not be comparable) and written, and this call counted on
    the wall clock. -> started, for `clock`."""
    (out / "runs").mkdir(parents=True, exist_ok=True)
    started = [time.perf_counter()]          # the wall clock since the last entry in wall.json
    settings = read_record(out / "settings.json")
    if settings is not None and settings != jsonable(cfg):
        raise ValueError(f"{out} holds a {what} with other settings; use another --out, or delete it.")
    write_json(out / "settings.json", jsonable(cfg))
    clock(out, started, new_call=True)
    return started


def jsonable(cfg) -> dict:
    """A settings dataclass as JSON holds it (tuples become lists): what settings.json compares."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def commit() -> str | None:
    """The kit's git commit, "-dirty" when the clone has uncommitted changes (None outside a clone)."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=5)
    except OSError:
        return None
    return done.stdout.strip() or None


def snapshot(model) -> dict[str, torch.Tensor]:
    """A copy of the parameters that train (the weights of a run's best evaluation)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def restore(model, state: dict) -> None:
    """Put a `snapshot` back into the model."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])
