"""Talk to what you trained: the base model, each adapter and the merged model answer the same
prompt, side by side, the tokens streaming as they are generated.

    replies = compare(model, tokenizer, "Extract name, age and city: ...")   # a peft model
    replies = compare(model, tokenizer, prompt, merged=merged, on_text=print_piece)

`python -m kit chat --adapter <folder>` does the same in a terminal (kit.chat.main), and
notebook 08's chat cell draws it with widgets (kit.widgets.chat_box). Answers are greedy, so
the same prompt gives the same answer.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import transformers  # a lazy module: the streamer class loads on first use

from kit.adapters import ADAPTER_FILE, adapter_names, load_adapter
from kit.data import chat_prompt, end_of_turn, pad_token_id
from kit.errors import UserError, command
from kit.files import DamagedFileError, check_tensors, read_json
from kit.models import load_model


class _Pieces(transformers.TextStreamer):
    """A streamer that hands each decoded piece of text to a function instead of printing it."""

    def __init__(self, tokenizer, on_text):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False):
        if text:
            self.on_text(text)


@torch.no_grad()
def answer(model, tokenizer, prompt, max_new_tokens: int = 96, on_text=None) -> str:
    """The model's greedy answer to `prompt` (a string or a conversation so far); `on_text`, if
    given, receives the text piece by piece as tokens are generated."""
    enc = tokenizer(chat_prompt(tokenizer, prompt), return_tensors="pt", add_special_tokens=False)
    enc = enc.to(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=end_of_turn(tokenizer)[1], pad_token_id=pad_token_id(tokenizer),
                             streamer=_Pieces(tokenizer, on_text) if on_text else None)
    finally:
        model.train(was_training)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def compare(model, tokenizer, prompt, merged=None, max_new_tokens: int = 96, on_text=None) -> dict:
    """{"base": ..., <each adapter>: ..., "merged": ...}: the answers of the base model (the
    adapters switched off), of every adapter of the peft `model`, and of `merged` if given.
    on_text(name, piece) receives each answer's pieces as they are generated."""
    if not hasattr(model, "peft_config"):
        raise ValueError("compare needs a model with adapters (a peft model: load_adapter(base, "
                         "folder)); for a plain model call answer(model, tokenizer, prompt).")
    stream = (lambda name: (lambda piece: on_text(name, piece))) if on_text else (lambda name: None)
    replies = {}
    with model.disable_adapter():
        replies["base"] = answer(model, tokenizer, prompt, max_new_tokens, stream("base"))
    active = model.active_adapter
    try:
        for name in adapter_names(model):
            model.set_adapter(name)
            replies[name] = answer(model, tokenizer, prompt, max_new_tokens, stream(name))
    finally:
        model.set_adapter(active)
    if merged is not None:
        replies["merged"] = answer(merged, tokenizer, prompt, max_new_tokens, stream("merged"))
    return replies


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
