"""The main job: execute every notebook headless, in order, and write one report.

    python -m kit run              # default parameters (the numbers the lessons discuss)
    python -m kit run --quick      # each notebook's smoke parameters (minutes)
    python -m kit run --only 03    # one notebook

Output: runs/<timestamp>/ with the executed notebooks, results/<name>.json, figures/*.png
and report.md; runs/latest points at the newest run. A failing notebook is reported with
the cell that failed, its partial output is kept, and the other notebooks still run.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kit.files import REPO_ROOT, RUNS, write_json
from kit.view.lessons import render_run
from kit.view.notebook import load_results

NOTEBOOKS = REPO_ROOT / "notebooks"


@dataclass
class Outcome:
    name: str
    ok: bool
    seconds: float
    error: str = ""
    cell: int | None = None  # 1-based, in the notebook as committed
    stalled: bool = False    # a cell ran past the time limit or the kernel died: worth a retry


@dataclass
class RunSummary:
    folder: Path
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)


def notebooks(only: str | None = None, start: str | None = None) -> list[Path]:
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if start:
        first = [i for i, p in enumerate(paths) if p.name.startswith(start) or p.stem == start]
        if not first:
            names = ", ".join(p.stem for p in paths)
            raise ValueError(f"--from {start!r} matches no notebook. Use a number or name from: {names}.")
        paths = paths[first[0]:]
    if only:
        wanted = [p for p in paths if p.name.startswith(only) or p.stem == only]
        if not wanted:
            names = ", ".join(p.stem for p in paths)
            raise ValueError(f"--only {only!r} matches no notebook. Use a number or name from: {names}.")
        paths = wanted
    return paths


def smoke_parameters(path: Path) -> dict:
    """A notebook's smoke parameters live in its metadata: {"kit": {"smoke": {...}}}."""
    meta = json.loads(path.read_text()).get("metadata", {})
    return dict(meta.get("kit", {}).get("smoke", {}))


@contextlib.contextmanager
def _stderr_to(log: Path):
    """Send this process's stderr, and that of the kernels it starts, to `log`: the kernel's
    start-up warnings and progress bars belong in a log, not between the progress lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log, "ab") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


# With the smoke parameters no cell took more than 48 s here. A longer wait is a stalled kernel
# connection, not a slow computation: twice in the test suite the kernel finished a cell and sat
# idle while the client went on waiting for its reply, once forever (no limit) and once until
# the limit, when the reply was read at once (as if the client's socket poll had missed its
# wake-up). The limit bounds that wait; a cell still running at the limit fails and is retried.
SMOKE_CELL_TIMEOUT = 120
STALLED = ("CellTimeoutError", "DeadKernelError", "TimeoutError")


def execute(path: Path, folder: Path, parameters: dict, cell_timeout: float | None = None,
            attempts: int = 1) -> Outcome:
    """Run one notebook with papermill into `folder`; never raises for a failing cell.
    The kernel's stderr goes to folder/logs/<notebook>.log.

    cell_timeout: seconds one cell may take (None: no limit, for full-size runs).
    attempts:     runs in all when a run stalls (a cell past cell_timeout, a dead kernel); a
                  cell that raises an error is never retried."""
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1; got {attempts!r}.")
    for attempt in range(1, attempts + 1):
        outcome = _execute_once(path, folder, parameters, cell_timeout)
        if outcome.ok or not outcome.stalled or attempt == attempts:
            return outcome
        print(f"{path.stem}: {outcome.error}; running it again ({attempt + 1} of {attempts})",
              file=sys.stderr, flush=True)
    return outcome


def execute_smoke(path: Path, folder: Path, parameters: dict) -> Outcome:
    """`execute` as the tests and `run --quick` use it: each cell within SMOKE_CELL_TIMEOUT,
    and one more attempt if the run stalls."""
    return execute(path, folder, parameters, cell_timeout=SMOKE_CELL_TIMEOUT, attempts=2)


def _execute_once(path: Path, folder: Path, parameters: dict, cell_timeout: float | None) -> Outcome:
    import papermill as pm  # the notebooks extra: pip install "finetune-kit[notebooks]"
    from papermill.exceptions import PapermillExecutionError

    start = time.time()
    out = folder / path.name
    try:
        with _stderr_to(folder / "logs" / f"{path.stem}.log"):
            pm.execute_notebook(str(path), str(out), parameters={**parameters, "RUN_DIR": str(folder)},
                                kernel_name="python3", cwd=str(path.parent), progress_bar=False,
                                log_output=False, execution_timeout=cell_timeout)
        return Outcome(path.stem, True, time.time() - start)
    except PapermillExecutionError as e:
        msg = f"{e.ename}: {e.evalue}".strip()
        first_line = (e.source or "").strip().splitlines()[:1]
        if first_line:
            msg += f"  [cell starts: {first_line[0][:80]}]"
        return Outcome(path.stem, False, time.time() - start, msg, _source_cell(out, e.cell_index))
    except Exception as e:  # kernel died, a cell past the time limit, notebook unreadable ...
        stalled = type(e).__name__ in STALLED
        msg = f"{type(e).__name__}: {e}".strip()
        if stalled and cell_timeout:
            msg = f"no result within the {cell_timeout:g} s limit per cell ({msg[:200]})"
        return Outcome(path.stem, False, time.time() - start, msg, stalled=stalled)


def _source_cell(executed: Path, index: int) -> int:
    """1-based number of the failing cell in the notebook as written (papermill's index
    counts the parameters cell it injected)."""
    try:
        cells = json.loads(executed.read_text())["cells"][:index]
    except (OSError, ValueError):
        return index + 1
    injected = sum("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in cells)
    return index - injected + 1


def _merge_outcomes(folder: Path, outcomes: list[Outcome]) -> list[Outcome]:
    """This run's outcomes plus those of earlier runs into the same folder (--from, --only)
    for notebooks not run again; stored in outcomes.json."""
    store = folder / "outcomes.json"
    earlier = json.loads(store.read_text()) if store.exists() else []
    merged = {o["name"]: Outcome(**o) for o in earlier} | {o.name: o for o in outcomes}
    ordered = [merged[k] for k in sorted(merged)]
    write_json(store, [o.__dict__ for o in ordered])
    return ordered


def run(quick: bool = False, only: str | None = None, folder: Path | None = None,
        extra: dict | None = None, start: str | None = None) -> RunSummary:
    """Execute the notebooks (all; `only` one; `start` that one and those after it) into
    `folder` and write its report. Running again into the same folder (--from 05 after a
    failure) keeps the earlier notebooks' results and outcomes in the report."""
    paths = notebooks(only, start)
    # absolute: the notebooks run with their own folder as the working directory
    folder = Path(folder).resolve() if folder else RUNS / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    summary = RunSummary(folder)
    print(f"Running {len(paths)} notebook(s) {'with smoke parameters ' if quick else ''}into {folder}",
          flush=True)
    for i, path in enumerate(paths, 1):
        params = {**(smoke_parameters(path) if quick else {}), **(extra or {})}
        print(f"[{i}/{len(paths)}] {path.stem} ...", end=" ", flush=True)
        outcome = execute_smoke(path, folder, params) if quick else execute(path, folder, params)
        summary.outcomes.append(outcome)
        if outcome.ok:
            print(f"ok ({outcome.seconds:.0f} s)", flush=True)
        else:
            where = f"cell {outcome.cell}" if outcome.cell is not None else "before any cell"
            print(f"FAILED at {where} ({outcome.seconds:.0f} s): {outcome.error[:300]}", flush=True)
            print(f"      partial output kept in {folder / path.name}; kernel log in "
                  f"{folder / 'logs' / (path.stem + '.log')}", flush=True)
    merged = RunSummary(folder, _merge_outcomes(folder, summary.outcomes))
    write_report(merged, quick)
    total = sum(o.seconds for o in merged.outcomes)
    print(f"{len(merged.outcomes)} notebook(s) in {folder.name}: {total:.0f} s ({total / 60:.1f} min) in all",
          flush=True)
    try:                                  # the learner's own lessons, with this run's numbers
        lessons = render_run(folder)
        print(f"Lessons with this run's numbers: {lessons[0].parent}", flush=True)
    except (ValueError, OSError) as e:    # a notebook that failed recorded nothing to quote
        print(f"Lessons not rendered: {e}", flush=True)
    if folder.resolve().parent == RUNS.resolve():
        link = RUNS / "latest"
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(folder.name, link)
    print(f"Report: {folder / 'report.md'}", flush=True)
    return summary


# ---------------------------------------------------------------------------- report
OVERVIEW_COLUMNS = [
    ("method", "method", "{}"),
    ("trainable_share", "trained params", "{:.2%}"),
    ("weight_memory_mb", "weights (MB)", "{:.0f}"),
    ("train_memory_mb", "training memory (MB)", "{:.0f}"),
    ("step_time_s", "s / step", "{:.2f}"),
    ("accuracy_before", "accuracy before", "{:.0%}"),
    ("accuracy_after", "accuracy after", "{:.0%}"),
    ("retention_before", "retention before", "{:.0%}"),
    ("retention_after", "retention after", "{:.0%}"),
]


def _fmt(value, pattern: str) -> str:
    if value is None:
        return "-"
    try:
        return pattern.format(value)
    except (ValueError, TypeError):
        return str(value)


def overview_table(results: dict[str, dict]) -> str:
    """One row per training method, from the `overview_row` each training notebook records
    (06 records all three as `overview_rows`; it wins when present)."""
    rows = []
    for name in sorted(results):
        res = results[name]
        if res.get("overview_rows"):
            rows = list(res["overview_rows"])
    if not rows:
        rows = [results[n]["overview_row"] for n in sorted(results) if results[n].get("overview_row")]
    if not rows:
        return ""
    head = "| " + " | ".join(label for _, label, _ in OVERVIEW_COLUMNS) + " |"
    sep = "|" + "---|" * len(OVERVIEW_COLUMNS)
    body = ["| " + " | ".join(_fmt(r.get(key), pat) for key, _, pat in OVERVIEW_COLUMNS) + " |"
            for r in rows]
    return "\n".join([head, sep, *body])


def _scalars(res: dict) -> list[tuple[str, object]]:
    skip = {"notebook", "hardware", "recorded_at", "overview_row", "overview_rows"}
    return [(k, v) for k, v in res.items()
            if k not in skip and (isinstance(v, (int, float, str, bool)) or v is None)]


def write_report(summary: RunSummary, quick: bool) -> Path:
    folder = summary.folder
    results = load_results(folder)
    hardware = next((r["hardware"] for r in results.values() if "hardware" in r), "unknown")
    lines = [f"# Run {folder.name}", "",
             f"Hardware: {hardware}. Parameters: {'smoke (--quick)' if quick else 'defaults'}.", ""]
    table = overview_table(results)
    if table:
        lines += ["## Full fine-tuning, LoRA and QLoRA, measured side by side", "", table, ""]
        for fig in ("06_overview", "06_memory_breakdown", "06_overview_memory"):
            if (folder / "figures" / f"{fig}.png").exists():
                lines.append(f"![{fig}](figures/{fig}.png)")
        lines.append("")
    lines += ["## Notebooks", "", "| notebook | status | time |", "|---|---|---|"]
    for o in summary.outcomes:
        status = "ok" if o.ok else f"FAILED at cell {o.cell}: {o.error[:120]}"
        lines.append(f"| [{o.name}]({o.name}.ipynb) | {status} | {o.seconds:.0f} s ({o.seconds / 60:.1f} min) |")
    total = sum(o.seconds for o in summary.outcomes)
    lines += [f"| all {len(summary.outcomes)} | | {total:.0f} s ({total / 60:.1f} min) |", ""]
    for name, res in results.items():
        lines += [f"## {name}", ""]
        scalars = _scalars(res)
        if scalars:
            lines += ["| result | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v, '{:.4g}') if isinstance(v, float) else v} |" for k, v in scalars]
            lines.append("")
        for fig in sorted((folder / "figures").glob(f"{name[:3]}*.png")):  # "NN_what.png"
            lines.append(f"![{fig.stem}](figures/{fig.name})")
        lines.append("")
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path
