"""Command line: `python -m kit <command>`.

    prepare      convert the bundled model into the local cache (make setup runs it)
    device       print the device profile, the dtype policy and the bitsandbytes 4-bit check
    run          execute every notebook headless into runs/<timestamp>/ (make run)
    finetune     train from a recipe: --config cpu-lora [--knob value ...] (--help: every knob)
    chat         talk to a trained adapter: --adapter <folder> (the base's answer beside it)
    diagnose     the usual faults of a fine-tune, found: --config <recipe> (before) or --run <folder> (after)
    study        full vs LoRA vs QLoRA: learning-rate sweeps, seeds, intervals, forgetting
    gpu-check    a few LoRA and QLoRA steps on the GPU, measured against the estimator
    lessons      render the lessons from the reference run (or --run FOLDER: from yours)
    sync-links   rewrite the Colab links of notebooks and README from pyproject's URL

A mistake in what a command is given (a data row, a recipe, a knob's value, a model name, a
missing or damaged file) is one line, `error: ...`, and exit code 2 (kit.errors); --debug,
before or after the command, shows its traceback.
"""
from __future__ import annotations

import argparse
import sys

from kit.errors import command

# commands with a parser of their own (one option per recipe knob: kit.commands.recipe), loaded
# only when called: they bring the training stack
OWN_PARSER = {"finetune": "kit.commands.finetune", "chat": "kit.commands.chat", "diagnose": "kit.commands.diagnose"}


@command
def main(argv: list[str]) -> int:
    if argv[:1] and argv[0] in OWN_PARSER:
        import importlib
        return importlib.import_module(OWN_PARSER[argv[0]]).main(argv[1:])
    args = parser().parse_args(argv)
    return HANDLERS[args.command](args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an error too (any command, before or after it)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="convert the bundled model once (offline)")
    sub.add_parser("device", help="print the device profile, dtype policy and bitsandbytes 4-bit check")
    run = sub.add_parser("run", help="execute every notebook headless and write a report")
    run.add_argument("--quick", action="store_true", help="use each notebook's smoke parameters")
    run.add_argument("--only", help="run one notebook, by number ('03') or name")
    run.add_argument("--from", dest="start", help="run this notebook and the ones after it "
                     "(with --out: continue an earlier run in its folder)")
    run.add_argument("--out", help="run folder (default runs/<timestamp>)")
    sub.add_parser("sync-links", help="rewrite Colab links from pyproject's Repository URL")
    lessons = sub.add_parser("lessons", help="render lessons/*.md from the reference run, or a run's own")
    lessons.add_argument("--run", help="a make run folder: its lessons go to <run>/lessons/")
    sub.add_parser("finetune", help="train from a YAML recipe (kit/recipes/); resumable; "
                   "python -m kit finetune --help lists every knob")
    sub.add_parser("chat", help="talk to an adapter beside its base model: --adapter <folder>")
    sub.add_parser("diagnose", help="find the usual faults of a fine-tune: --config <recipe> or --run <folder>")
    study = sub.add_parser("study", help="the comparison: every run to its plateau, rate sweeps, seeds, "
                           "forgetting at matched learning, LoftQ (about 3 hours on 2 CPU cores; resumable)")
    study.add_argument("--quick", "--smoke", action="store_true", dest="quick",
                       help="tiny-llama, a few steps: every output in about a minute (its numbers mean nothing)")
    study.add_argument("--arm", choices=("methods", "variants"), default="methods",
                       help="methods: full vs LoRA vs QLoRA (the study); variants: LoRA against DoRA, rsLoRA, "
                       "LoRA+, PiSSA and attention-only / MLP-only targets at LoRA's parameter count "
                       "(kit.study.variants, about an hour on 2 CPU cores; resumable)")
    study.add_argument("--out", help="study folder (default runs/study, runs/study-variants with --arm variants; "
                       "a finished run is skipped)")
    gpu = sub.add_parser("gpu-check", help="LoRA and QLoRA steps on the GPU vs the estimator")
    gpu.add_argument("--steps", type=int, default=5, help="optimizer steps per method (default 5)")
    gpu.add_argument("--model", default="smollm2-135m", help="model to check (default the bundled one)")
    gpu.add_argument("--allow-cpu", action="store_true",
                     help="run on a machine without a GPU too (to test the script itself)")
    gpu.add_argument("--out", help="write the table and JSON here (default runs/gpu-check)")
    gpu.add_argument("--methods", help="comma-separated, from full,lora,qlora (default lora,qlora)")
    gpu.add_argument("--recipe", help="take model, method, rank, batch, checkpointing and optimizer "
                                      "from this recipe (e.g. t4-qlora-7b)")
    gpu.add_argument("--random-weights", action="store_true",
                     help="build the model's architecture with random weights (no download; "
                          "memory and speed as the real model's)")
    return p


def _prepare(args) -> int:
    from kit.machine.models import ensure_bundled, ensure_tiny
    print(f"bundled model: {ensure_bundled()}")
    print(f"tiny-llama   : {ensure_tiny()}")
    return 0


def _device(args) -> int:
    from kit.machine.bnb_check import preflight
    from kit.machine.device import profile
    print(profile().summary())
    report = preflight()   # bitsandbytes' 4-bit against kit.scratch.quant and a backward pass
    print(report.line if report else "bitsandbytes is not installed: no 4-bit here")
    return 0


def _run(args) -> int:
    from kit.commands.runner import run as run_all
    summary = run_all(quick=args.quick, only=args.only, folder=args.out, start=args.start)
    return 0 if summary.ok else 1


def _lessons(args) -> int:
    from kit.view.lessons import main as lessons_main
    return lessons_main(["--run", args.run] if args.run else [])


def _study(args) -> int:
    from kit.files import RUNS
    if args.arm == "variants":
        from kit.study import variants
        out = args.out or RUNS / ("study-variants-quick" if args.quick else "study-variants")
        print(variants.report(variants.run(variants.QUICK if args.quick else variants.VariantsConfig(), out)))
        print(f"written to {out}/variants.json")
        return 0
    from kit.study import plots as study_plots, report as study_report, run as study
    from kit.study.design import QUICK, for_this_machine
    out = args.out or RUNS / ("study-quick" if args.quick else "study")
    summary = study.run(QUICK if args.quick else for_this_machine(), out)
    study_plots.save_all(summary, f"{out}/figures")
    print(study_report.report(summary))
    print(f"written to {out}/study.json and {out}/figures/")
    return 0


def _gpu_check(args) -> int:
    from kit.commands.gpu_check import main as gpu_main
    return gpu_main(steps=args.steps, model=args.model, allow_cpu=args.allow_cpu, out=args.out,
                    recipe=args.recipe, random_weights=args.random_weights,
                    methods=args.methods.split(",") if args.methods is not None else None)


def _sync_links(args) -> int:
    from kit.commands.links import sync
    for path in sync():
        print(f"updated {path}")
    return 0


HANDLERS = {"prepare": _prepare, "device": _device, "run": _run, "lessons": _lessons, "study": _study,
            "gpu-check": _gpu_check, "sync-links": _sync_links}


if __name__ == "__main__":
    sys.exit(main())
