"""`python -m kit chat --adapter <folder>`: talk to what you trained in a terminal, the base
model, each adapter and the merged model answering each prompt side by side (kit.engine.compare).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kit.engine.adapters import ADAPTER_FILE, load_adapter
from kit.engine.compare import compare
from kit.errors import UserError, command
from kit.files import DamagedFileError, check_tensors, read_json
from kit.machine.models import load_model


# ---------------------------------------------------------------------------- the terminal
def base_of(folder) -> str:
    """The base model an adapter was saved from (peft's adapter_config.json)."""
    config = Path(folder) / "adapter_config.json"
    if not config.is_file():
        raise UserError(f"--adapter {str(folder)!r} holds no saved adapter (no adapter_config.json); "
                        "give the folder save_adapter wrote (e.g. runs/finetune/cpu-lora/adapter).")
    return read_json(config, "adapter").get("base_model_name_or_path") or "smollm2-135m"


def load_for_chat(adapter, base: str | None = None):
    """(the base with the adapter on it, tokenizer); a clear error if the adapter does not fit."""
    base = base or base_of(adapter)
    check_tensors(Path(adapter) / ADAPTER_FILE, "adapter")  # a damaged file: said before the model loads
    model, tokenizer = load_model(base)
    try:
        return load_adapter(model, adapter), tokenizer
    except DamagedFileError:
        raise
    except (RuntimeError, ValueError) as e:  # peft's size mismatch, or the kit's own check
        raise UserError(f"The adapter in {str(adapter)!r} does not fit the base model {base!r}: it was "
                        f"trained on another architecture ({str(e).splitlines()[0][:200]}). Pass the "
                        "model it was trained on with --base.") from None


@command
def main(argv: list[str]) -> int:
    """python -m kit chat --adapter FOLDER [--base MODEL]: type a prompt, read the base model's
    and the adapter's answers as they are generated; an empty line or Ctrl-D ends. A missing or
    damaged adapter is one line on stderr and exit code 2 (--debug: its traceback too)."""
    ap = argparse.ArgumentParser(prog="python -m kit chat", description=main.__doc__)
    ap.add_argument("--adapter", required=True, help="a folder written by save_adapter / kit finetune")
    ap.add_argument("--base", help="the base model (default: the one recorded in the adapter)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    args = ap.parse_args(argv)
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1; got {args.max_new_tokens}. "
                        "E.g. --max-new-tokens 96.")
    model, tokenizer = load_for_chat(args.adapter, args.base)
    print(f"chatting with {args.adapter} on {args.base or base_of(args.adapter)}; an empty line ends.")
    while True:
        try:
            prompt = input("you> ").strip()
        except EOFError:
            break
        if not prompt:
            break
        current = []

        def show(name, piece):
            if current[-1:] != [name]:
                print(f"\n[{name}] ", end="")
                current.append(name)
            print(piece, end="", flush=True)

        compare(model, tokenizer, prompt, max_new_tokens=args.max_new_tokens, on_text=show)
        print()
    return 0
