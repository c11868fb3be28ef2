"""From text to training tokens: the chat template, the answer-only labels (-100 on the prompt),
the end-of-turn token the model learns to stop on, the pad token.
"""
from __future__ import annotations

import warnings

from datasets import Dataset, DatasetDict

OVERFLOW_POLICIES = ("truncate", "drop", "error")


IGNORE_INDEX = -100  # label value that torch.nn.functional.cross_entropy skips


class OverflowWarning(UserWarning):
    """Examples were truncated or dropped because they exceed max_length."""


# =============================================================================== formatting
def chat_prompt(tokenizer, prompt) -> str:
    """The prompt as the model sees it at generation time: chat template, the user turn (or
    `prompt` as a list of turns: a conversation so far), then the assistant header
    (`add_generation_prompt=True`). A tokenizer without a chat template gets a plain
    'User: ...\\nAssistant: ' format."""
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return "".join(f"{t['role'].capitalize()}: {t['content']}\n" for t in turns) + "Assistant: "


def end_of_turn(tokenizer) -> tuple[str, int]:
    """The token that closes the assistant's turn: `<|im_end|>` for ChatML models such as
    SmolLM2 (and Qwen), otherwise the tokenizer's eos token."""
    token = "<|im_end|>"
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        token, token_id = tokenizer.eos_token, tokenizer.eos_token_id
    return token, token_id


def pad_token_id(tokenizer) -> int:
    """The token id that fills padded positions, one rule for training and generation:
    the tokenizer's pad token, else the end-of-turn token (`end_of_turn`).

    Padded positions are never attended to (attention_mask 0) nor scored (label -100),
    so the choice does not change the loss; but `collate` and `model.generate` need a
    real id, and many causal-LM tokenizers have no pad token. The fallback is the
    end-of-turn token because every answer ends with it and generation stops on it: a
    row that finished early is filled with more "end of turn". For a model without
    <|im_end|>, `end_of_turn` is the eos token, the usual fallback."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    token_id = end_of_turn(tokenizer)[1]
    if token_id is None:
        raise ValueError("The tokenizer has no pad token, no <|im_end|> and no eos token, so "
                         "there is no id to pad with. Set one, e.g. tokenizer.pad_token = "
                         "tokenizer.unk_token.")
    return token_id


def encode_example(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """-> (prompt_ids, answer_ids). The answer is the response's tokens + end-of-turn.
    Both parts are tokenized separately, exactly as generation sees them."""
    prompt_ids = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return prompt_ids, answer_ids + [end_of_turn(tokenizer)[1]]


def encode_conversation(tokenizer, turns: list[dict]) -> tuple[list[int], list[int]]:
    """-> (input_ids, labels) of a whole conversation: labels are the tokens of every assistant
    turn's content and its end-of-turn token, -100 everywhere else (system and user turns, the
    template's role headers). Each assistant turn is tokenized as generation would see it: the
    conversation before it with the assistant header (`chat_prompt`), then its answer."""
    eot_token, eot_id = end_of_turn(tokenizer)
    ids, labels, seen = [], [], ""
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        before = chat_prompt(tokenizer, turns[:i])          # ... up to "<|im_start|>assistant\n"
        if not before.startswith(seen):
            raise ValueError("This tokenizer's chat template does not render a conversation turn by "
                             "turn, so the answers cannot be told apart; use prompt/response data.")
        context = tokenizer(before[len(seen):], add_special_tokens=False)["input_ids"]
        answer = tokenizer(turn["content"], add_special_tokens=False)["input_ids"] + [eot_id]
        ids += context + answer
        labels += [IGNORE_INDEX] * len(context) + answer
        seen = before + turn["content"] + eot_token
    return ids, labels


def _tokenize_split(ds, tokenizer, max_length: int, overflow: str, split: str):
    if "messages" in ds.column_names:
        return _tokenize_conversations(ds, tokenizer, max_length, overflow, split)
    for col in ("prompt", "response"):
        if col not in ds.column_names:
            raise ValueError(f"The {split} data needs a {col!r} column; it has {ds.column_names}. "
                             "Use make_task, load_local or load_hub, which produce prompt/response.")
    new = {"input_ids": [], "attention_mask": [], "labels": []}
    kept, truncated, dropped = [], 0, 0
    for i, (prompt, response) in enumerate(zip(ds["prompt"], ds["response"])):
        prompt_ids, answer_ids = encode_example(tokenizer, prompt, response)
        length = len(prompt_ids) + len(answer_ids)
        if length > max_length:
            if overflow == "error":
                raise ValueError(
                    f"Example {i} of {split} has {length} tokens, more than max_length="
                    f"{max_length}. Raise max_length, shorten the example, or pass "
                    "overflow='truncate' (cut the prompt's start) or overflow='drop'.")
            if overflow == "drop" or len(answer_ids) >= max_length:
                dropped += 1
                continue
            prompt_ids = prompt_ids[length - max_length:]  # keep the prompt's end + whole answer
            truncated += 1
        kept.append(i)
        new["input_ids"].append(prompt_ids + answer_ids)                       # (T,)
        new["attention_mask"].append([1] * (len(prompt_ids) + len(answer_ids)))
        new["labels"].append([IGNORE_INDEX] * len(prompt_ids) + answer_ids)    # loss on answer
    if truncated or dropped:
        warnings.warn(f"{split}: {len(ds)} examples, max_length={max_length}: truncated the "
                      f"prompt of {truncated}, dropped {dropped} (overflow={overflow!r}).",
                      OverflowWarning, stacklevel=3)
    if len(ds) and not kept:
        raise ValueError(f"Every example of {split} is longer than max_length={max_length}; "
                         "raise max_length.")
    return Dataset.from_dict({**ds.select(kept).to_dict(), **new})


def _tokenize_conversations(ds, tokenizer, max_length: int, overflow: str, split: str):
    """Conversations (a messages column): the loss on every assistant turn. Too long ones lose
    their first tokens (overflow="truncate"; the last answer is kept), or are dropped/refused."""
    new = {"input_ids": [], "attention_mask": [], "labels": []}
    kept, truncated, dropped = [], 0, 0
    for i, turns in enumerate(ds["messages"]):
        ids, labels = encode_conversation(tokenizer, turns)
        if len(ids) > max_length:
            if overflow == "error":
                raise ValueError(f"Conversation {i} of {split} has {len(ids)} tokens, more than "
                                 f"max_length={max_length}. Raise max_length, or pass overflow="
                                 "'truncate' (drop its first tokens) or overflow='drop'.")
            ids, labels = ids[-max_length:], labels[-max_length:]
            if overflow == "drop" or all(x == IGNORE_INDEX for x in labels):
                dropped += 1
                continue
            truncated += 1
        kept.append(i)
        new["input_ids"].append(ids)
        new["attention_mask"].append([1] * len(ids))
        new["labels"].append(labels)
    if truncated or dropped:
        warnings.warn(f"{split}: {len(ds)} conversations, max_length={max_length}: truncated "
                      f"{truncated}, dropped {dropped} (overflow={overflow!r}).", OverflowWarning,
                      stacklevel=3)
    if len(ds) and not kept:
        raise ValueError(f"Every conversation of {split} is longer than max_length={max_length}; "
                         "raise max_length.")
    return Dataset.from_dict({**ds.select(kept).to_dict(), **new})


def tokenize(data, tokenizer, max_length: int = 256, overflow: str = "truncate"):
    """Add input_ids, attention_mask and labels to a Dataset or every split of a DatasetDict.

    labels = -100 on the prompt (chat template + user turn + assistant header), the token
    ids on the answer (response + end-of-turn). Too long examples (overflow):
      "truncate"  drop tokens from the START of the prompt (the system prompt goes first),
                  keep the whole answer; an answer that alone fills max_length is dropped.
      "drop"      drop the example.
      "error"     raise a ValueError naming the example and max_length.
    Truncations and drops are counted in an OverflowWarning."""
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}; got {overflow!r}.")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2; got {max_length!r}. Try 256.")
    if isinstance(data, DatasetDict):
        if all(len(d) == 0 for d in data.values()):
            raise ValueError("The DatasetDict is empty (no examples in any split).")
        return DatasetDict({k: _tokenize_split(d, tokenizer, max_length, overflow, k)
                            for k, d in data.items()})
    if isinstance(data, Dataset):
        if len(data) == 0:
            raise ValueError("The dataset is empty: there is nothing to tokenize.")
        return _tokenize_split(data, tokenizer, max_length, overflow, "data")
    raise ValueError(f"data must be a datasets.Dataset or DatasetDict; got {type(data).__name__}. "
                     "Build one with make_task, load_local or load_hub.")
