"""Which tokens train: one example drawn with its trained tokens in [brackets], and what is wrong
with the labels (nothing trained, the end of turn not trained, pad == end of turn, the prompt trained).
"""
from __future__ import annotations

from kit.commands.diagnose.findings import Finding
from kit.engine.data import IGNORE_INDEX, end_of_turn, pad_token_id


# ---------------------------------------------------------------------------- labels
def label_view(row: dict, tokenizer, limit: int = 400) -> str:
    """One tokenized example as text, the trained tokens (labels != -100) in [brackets]."""
    out, inside = [], False
    for token, label in zip(row["input_ids"], row["labels"]):
        trained = label != IGNORE_INDEX
        if trained != inside:
            out.append("[" if trained else "]")
            inside = trained
        out.append(tokenizer.decode([token]))
    text = "".join(out) + ("]" if inside else "")
    return text if len(text) <= limit else text[:limit] + " ..."


def check_labels(rows: list[dict], tokenizer) -> list[Finding]:
    """rows: tokenized examples (input_ids, labels), as the loop will see them."""
    eot_name, eot = end_of_turn(tokenizer)
    trained = [[t for t, lab in zip(r["input_ids"], r["labels"]) if lab != IGNORE_INDEX] for r in rows]
    found = []
    empty = sum(not t for t in trained)
    if empty == len(rows):
        return [Finding("labels", "nothing-trained", f"no token of the {len(rows)} examples read is trained "
                        "(every label is -100): the loss is 0 or NaN and nothing learns.",
                        "train on the answer: labels = input_ids on the response and end of turn "
                        "(kit.engine.data.tokenize does this), -100 on the prompt only.")]
    if empty:
        found.append(Finding("labels", "rows-not-trained", f"{empty} of {len(rows)} examples have no trained "
                             "token (a prompt so long that the answer was cut off?).",
                             "raise max_length, or shorten the prompts."))
    no_stop = sum(bool(t) and t[-1] != eot for t in trained)
    if no_stop:
        shared = pad_token_id(tokenizer) == eot
        found.append(Finding(
            "labels", "end-of-turn-not-trained",
            f"in {no_stop} of {len(rows)} examples the last trained token is not the end of turn "
            f"({eot_name!r}): the model is never taught to stop, and keeps generating."
            + (f" The pad id is the end-of-turn id ({eot}): a collator that masks labels equal to the pad "
               "id masks every end of turn (trl#1623)." if shared else ""),
            "put the end-of-turn token at the end of every answer and keep its label; mask padding by "
            "position (attention_mask), not by token id, or give the tokenizer a pad token of its own."))
    if all(r["labels"][0] != IGNORE_INDEX for r in rows):
        found.append(Finding("labels", "prompt-trained", "the first token of every example is trained: the "
                             "prompt is trained too, so the model also learns to write questions.",
                             "set the prompt's labels to -100 (kit.engine.data.tokenize does)."))
    return found
