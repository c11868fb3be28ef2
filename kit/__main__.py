"""Command line: `python -m kit <command>`.

    prepare      convert the bundled model into the local cache (make setup runs it)
    device       print the device profile and dtype policy
    run          execute every notebook headless into runs/<timestamp>/ (make run)
    sync-links   rewrite the Colab links of notebooks and README from pyproject's URL
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="convert the bundled model once (offline)")
    sub.add_parser("device", help="print the device profile and dtype policy")
    run = sub.add_parser("run", help="execute every notebook headless and write a report")
    run.add_argument("--quick", action="store_true", help="use each notebook's smoke parameters")
    run.add_argument("--only", help="run one notebook, by number ('03') or name")
    run.add_argument("--out", help="run folder (default runs/<timestamp>)")
    sub.add_parser("sync-links", help="rewrite Colab links from pyproject's Repository URL")
    args = parser.parse_args(argv)

    if args.command == "prepare":
        from kit.models import ensure_bundled, ensure_tiny
        print(f"bundled model: {ensure_bundled()}")
        print(f"tiny-llama   : {ensure_tiny()}")
        return 0
    if args.command == "device":
        from kit.device import profile
        print(profile().summary())
        return 0
    if args.command == "run":
        from kit.runner import run as run_all
        try:
            summary = run_all(quick=args.quick, only=args.only, folder=args.out)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0 if summary.ok else 1
    if args.command == "sync-links":
        from kit.links import sync
        for path in sync():
            print(f"updated {path}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
