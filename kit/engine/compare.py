"""The base model, each adapter and the merged model answering the same prompt, side by side,
the tokens streaming as they are generated (greedy: the same prompt gives the same answer).

    replies = compare(model, tokenizer, "Extract name, age and city: ...")   # a peft model
    replies = compare(model, tokenizer, prompt, merged=merged, on_text=print_piece)

`python -m kit chat` (kit.commands.chat) does it in a terminal, notebook 08's chat cell with
widgets (kit.view.widgets.chat_box).
"""
from __future__ import annotations

import torch
import transformers  # a lazy module: the streamer class loads on first use

from kit.engine.adapters import adapter_names
from kit.engine.data import chat_prompt, end_of_turn, pad_token_id


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
