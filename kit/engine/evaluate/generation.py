"""Scores that generate: greedy answers (batched), exact match with the kit's rule, the capitals
probe (retention), the base model's own answers to general prompts.
"""
from __future__ import annotations

import json

import torch
from datasets import Dataset, DatasetDict

from kit.engine.data import GENERAL_PROMPTS, RETENTION_PROBE, chat_prompt, end_of_turn, pad_token_id

JSON_TASKS = ("extract",)


def _device(model) -> torch.device:
    return next(model.parameters()).device


# =============================================================================== generation
@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 48,
             batch_size: int = 25) -> list[str]:
    """Greedy answers to `prompts` (chat template applied), decoded and stripped. A prompt is
    a string (one user turn) or a conversation so far (a list of {"role", "content"} turns).

    Batched with LEFT padding: every prompt ends at the last column, so the new tokens of
    all rows start together. Generation stops at the end-of-turn token <|im_end|>.
    Prompts are sorted by length first (less padding), answers come back in input order.
    The tokenizer's padding side and the model's train/eval mode are restored after."""
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings; got one string. Use [prompt].")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}.")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1; got {max_new_tokens!r}.")
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    eot_id = end_of_turn(tokenizer)[1]
    pad_id = pad_token_id(tokenizer)
    answers: list[str | None] = [None] * len(texts)
    old_side, was_training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(_device(model))
            out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                 eos_token_id=eot_id, pad_token_id=pad_id)  # (B, T + new)
            new_tokens = out[:, enc["input_ids"].shape[1]:]                 # (B, new)
            for i, text in zip(idx, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                answers[i] = text.strip()
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return answers


# =============================================================================== exact match
def _parse_json(text: str):
    try:
        return json.loads(text.strip())
    except (json.JSONDecodeError, TypeError):
        return None


def is_json_answer(expected: str) -> bool:
    """True if the expected answer is a JSON object or list."""
    return isinstance(_parse_json(expected), (dict, list))


def answers_match(got: str, expected: str, task: str | None = None) -> bool:
    """The exact-match rule (see the module docstring)."""
    if task in JSON_TASKS or (task is None and is_json_answer(expected)):
        parsed = _parse_json(got)
        return parsed is not None and parsed == _parse_json(expected)
    return got.strip() == expected.strip()


def exact_match(model, tokenizer, dataset, n: int | None = None, batch_size: int = 25,
                max_new_tokens: int | None = None, task: str | None = None) -> dict:
    """Share of the first `n` examples (all if None) of a prompt/response Dataset whose
    greedy answer matches the response (rule: `answers_match`; `task` "dates", "extract"
    or None = decide from the expected answer). A conversation Dataset (messages) is scored
    on its last assistant turn, given the turns before it. max_new_tokens None -> the longest
    expected answer in tokens + 8.
    -> {"accuracy", "correct", "total", "examples": [{"prompt", "expected", "got", "ok"}]}"""
    if isinstance(dataset, DatasetDict):
        raise ValueError("dataset must be one split, e.g. data['test'], not a DatasetDict.")
    conversations = "messages" in dataset.column_names
    for col in () if conversations else ("prompt", "response"):
        if col not in dataset.column_names:
            raise ValueError(f"dataset needs a {col!r} column; it has {dataset.column_names}.")
    if n is not None:
        dataset = dataset.select(range(min(n, len(dataset))))
    if len(dataset) == 0:
        raise ValueError("dataset is empty: there is nothing to evaluate.")
    if conversations:
        prompts = [turns[:-1] for turns in dataset["messages"]]
        expected = [turns[-1]["content"] for turns in dataset["messages"]]
    else:
        prompts, expected = list(dataset["prompt"]), list(dataset["response"])
    if max_new_tokens is None:
        longest = max(len(tokenizer(e, add_special_tokens=False)["input_ids"]) for e in expected)
        max_new_tokens = longest + 8
    got = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    examples = [{"prompt": p, "expected": e, "got": g, "ok": answers_match(g, e, task)}
                for p, e, g in zip(prompts, expected, got)]
    correct = sum(x["ok"] for x in examples)
    return {"accuracy": correct / len(examples), "correct": correct, "total": len(examples),
            "examples": examples}


# =============================================================================== retention
def retention(model, tokenizer, probe: list[tuple[str, str]] = RETENTION_PROBE,
              batch_size: int = 25, max_new_tokens: int = 32) -> dict:
    """Share of probe questions whose greedy answer contains the expected text
    (case-insensitive). A drop after fine-tuning = forgetting.
    -> {"score", "correct", "total", "failures": [{"question", "expected", "got"}]}"""
    if not probe:
        raise ValueError("probe is empty: give (question, expected substring) pairs.")
    got = generate(model, tokenizer, [q for q, _ in probe], max_new_tokens=max_new_tokens,
                   batch_size=batch_size)
    failures = [{"question": q, "expected": e, "got": g}
                for (q, e), g in zip(probe, got) if e.lower() not in g.lower()]
    correct = len(probe) - len(failures)
    return {"score": correct / len(probe), "correct": correct, "total": len(probe),
            "failures": failures}


# =============================================================================== forgetting
def reference_answers(base, tokenizer, prompts: list[str] = GENERAL_PROMPTS,
                      max_new_tokens: int = 32, batch_size: int = 25) -> Dataset:
    """The base model's own greedy answers to general prompts, as a prompt/response Dataset:
    what `divergence` scores a fine-tuned model against (generated once, before training)."""
    answers = generate(base, tokenizer, list(prompts), max_new_tokens=max_new_tokens,
                       batch_size=batch_size)
    return Dataset.from_dict({"prompt": list(prompts), "response": answers})  # "" is an answer too:
