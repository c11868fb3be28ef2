"""Lessons rendered from results: every number a lesson states about a run of the kit comes from
a recorded results file, through a template.

    lessons/templates/01-full-finetuning.md     the lesson's text, with {{ r01.step_time_s | s }}
    lessons/reference/                          one full `make run` (results/, figures/) and
                                                `make study` (study/) on the 2-core CI machine
    lessons/01-full-finetuning.md               the rendering of the template with the reference

`python -m kit run` renders the learner's own copy of every lesson into runs/<timestamp>/lessons/
with their numbers; a test renders the committed lessons from the reference and fails on any
difference, so a lesson cannot say what the reference does not hold.

In a template: r00 ... r09 are the notebooks' results (results/NN_*.json), `study` is the
study's summary (study/study.json), `ref` describes the reference run (hardware, date, versions),
and `fig("01_loss_curves")` is a figure's path. A missing key is an error naming the template.
Numbers from papers or the seed keep their citation and are written as text.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import jinja2

from kit.errors import UserError, command
from kit.files import REPO_ROOT, RUNS, read_json

LESSONS = REPO_ROOT / "lessons"
TEMPLATES = LESSONS / "templates"
REFERENCE = LESSONS / "reference"
GPU_CHECK = REPO_ROOT / "benchmarks" / "gpu-check-h200"   # python -m kit gpu-check on an H200
README = "README.md"      # lessons/templates/README.md renders into the repository's README.md


# ---------------------------------------------------------------------------- formatting filters
def _num(x) -> float:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        raise ValueError("a template formats a missing value (None or NaN)")
    return float(x)


def pct(x, digits: int = 0) -> str:
    """0.375 -> '38%' (digits=1: '37.5%')."""
    return f"{100 * _num(x):.{digits}f}%"


def mb(x, digits: int = 1) -> str:
    """bytes -> '9.8 MB' (1 MB = 1e6 bytes)."""
    return f"{_num(x) / 1e6:,.{digits}f} MB"


def gb(x, digits: int = 1) -> str:
    """bytes -> '12.8 GB' (1 GB = 1e9 bytes)."""
    return f"{_num(x) / 1e9:,.{digits}f} GB"


def num(x, digits: int = 0) -> str:
    """12345.6 -> '12,346' (digits=2: '12,345.60')."""
    return f"{_num(x):,.{digits}f}"


def sig(x, digits: int = 2) -> str:
    """Significant digits: 0.000316 -> '0.00032', 2e-3 -> '0.002' (rates, losses)."""
    return f"{_num(x):.{digits}g}"


def sec(x, digits: int = 0) -> str:
    """seconds -> '384 s'."""
    return f"{_num(x):,.{digits}f} s"


def times(x, digits: int = 2) -> str:
    """a ratio -> '1.07x'."""
    return f"{_num(x):.{digits}f}x"


def interval(pair, digits: int = 0) -> str:
    """(low, high) shares -> '31-60%'."""
    low, high = pair
    return f"{100 * _num(low):.{digits}f}-{100 * _num(high):.{digits}f}%"


FILTERS = {"pct": pct, "mb": mb, "gb": gb, "num": num, "sig": sig, "s": sec, "x": times,
           "interval": interval}


# ---------------------------------------------------------------------------- the context
def context(results_dir, study_dir=None, figures: str = "reference/figures",
            study_figures: str = "reference/study/figures") -> dict:
    """What a template sees: r00 ... r09, study, ref, fig(), study_fig()."""
    results_dir = Path(results_dir)
    ctx = {}
    for path in sorted(results_dir.glob("[0-9][0-9]_*.json")):
        ctx[f"r{path.name[:2]}"] = read_json(path, "notebook results")
    if study_dir is not None and (Path(study_dir) / "study.json").exists():
        ctx["study"] = read_json(Path(study_dir) / "study.json", "study summary")
    first = ctx.get("r00") or next((v for k, v in ctx.items() if k.startswith("r")), {})
    hardware = first.get("hardware", "unknown hardware")
    ctx["ref"] = {"hardware": hardware, "machine": hardware,   # reference.json says more
                  "date": str(first.get("recorded_at", ""))[:10],
                  "versions": first.get("device", {}).get("versions", {})}
    meta = results_dir.parent / "reference.json"           # the reference run's own description
    if meta.exists():
        ctx["ref"] |= read_json(meta, "reference description")
    # what the README quotes beside the notebooks: the benchmark, a recipe run, the notebooks'
    # times (outcomes.json of `python -m kit run`), the GPU check
    for name in ("bench_methods", "bench_padding", "cpu_lora", "outcomes"):
        path = results_dir.parent / f"{name}.json"
        if path.exists():
            ctx[name] = json.loads(path.read_text())   # outcomes.json is a list
    ctx["gpu"] = {p.stem: read_json(p, "GPU check") for p in sorted(GPU_CHECK.glob("*.json"))}
    ctx["fig"] = lambda name, folder=figures: f"{folder}/{name}.png"
    ctx["study_fig"] = lambda name: f"{study_figures}/{name}.png"
    return ctx


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    env.filters.update(FILTERS)
    return env


def render(name: str, ctx: dict) -> str:
    """One lesson (a template's file name) rendered with `ctx`; a key the results do not hold
    raises a ValueError naming the template and the key."""
    try:
        return environment().get_template(name).render(**ctx)
    except jinja2.UndefinedError as e:
        raise ValueError(f"lessons/templates/{name}: {e.message} (the results hold no such value: "
                         "re-run the notebook that records it, or fix the template)") from None


def render_all(results_dir, study_dir=None, out=LESSONS, figures: str = "reference/figures",
               study_figures: str = "reference/study/figures") -> list[Path]:
    """Render every template into `out`; returns the files written."""
    ctx = context(results_dir, study_dir, figures, study_figures)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for template in sorted(TEMPLATES.glob("[0-9][0-9]-*.md")):
        path = out / template.name
        path.write_text(render(template.name, ctx))
        written.append(path)
    if Path(out).resolve() == LESSONS.resolve() and (TEMPLATES / README).exists():
        (REPO_ROOT / README).write_text(render(README, ctx))   # the README quotes the reference too
        written.append(REPO_ROOT / README)
    return written


def render_run(run) -> list[Path]:
    """A learner's copy of every lesson, with the numbers of the run folder `run` (and of their
    own study, if they ran one into <run>/study or runs/study), into <run>/lessons/."""
    run = Path(run)
    for study in (run / "study", RUNS / "study", REFERENCE / "study"):
        if (study / "study.json").exists():
            break
    return render_all(run / "results", study, run / "lessons", figures="../figures",
                      study_figures=str(Path("..") / study.relative_to(run) / "figures")
                      if study.is_relative_to(run) else str((study / "figures").resolve()))


@command
def main(argv: list[str]) -> int:
    """python -m kit lessons [--run FOLDER]: render the lessons from a run folder (default: the
    committed reference into lessons/)."""
    ap = argparse.ArgumentParser(prog="python -m kit lessons", description=main.__doc__)
    ap.add_argument("--run", help="a run folder of `make run` (its lessons go to <run>/lessons/)")
    args = ap.parse_args(argv)
    if args.run:
        run = Path(args.run)
        results = sorted((run / "results").glob("[0-9][0-9]_*.json"))
        if not results:
            raise UserError(f"--run {args.run!r} is not a run folder: it holds no results/NN_*.json. "
                            "Give a folder that python -m kit run wrote, e.g. --run runs/latest.")
        for path in results:  # a damaged results file: named here, not deep in a template
            read_json(path, "results")
        paths = render_run(run)
    else:
        paths = render_all(REFERENCE / "results", REFERENCE / "study")
    for p in paths:
        print(f"rendered {p}")
    return 0
