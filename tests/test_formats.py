"""kit.engine.formats: the formats people have (conversations, Alpaca records, prompt/response), read
with `datasets`; the loss on every assistant turn and nothing else; malformed rows named."""
import json

import pytest
from datasets import Dataset

from kit.engine import formats
from kit.engine.data import IGNORE_INDEX, chat_prompt, encode_conversation, end_of_turn, tokenize

CHAT = [
    {"messages": [{"role": "system", "content": "You answer in one word."},
                  {"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": "Paris."},
                  {"role": "user", "content": "And of Italy?"},
                  {"role": "assistant", "content": "Rome."}]},
    {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]},
]


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_a_conversation_file_is_read_as_messages(tmp_path):
    d = formats.load_local(write_jsonl(tmp_path / "chat.jsonl", CHAT * 5), val_fraction=0.2, test_fraction=0)
    assert d["train"].column_names == ["messages"] and len(d["train"]) == 8 and len(d["validation"]) == 2
    assert formats.detect(["messages"]) == "conversation"


def test_the_loss_covers_every_assistant_turn_and_nothing_else(tokenizer):
    turns = CHAT[0]["messages"]
    ids, labels = encode_conversation(tokenizer, turns)
    answers = [t["content"] for t in turns if t["role"] == "assistant"]
    eot = end_of_turn(tokenizer)[1]
    expected = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for a in answers)
    scored = [x for x in labels if x != IGNORE_INDEX]
    assert len(scored) == expected                         # the assistant tokens, end-of-turn included
    assert tokenizer.decode(scored) == "Paris.<|im_end|>Rome.<|im_end|>" and scored.count(eot) == 2
    assert len(ids) == len(labels) and tokenizer.decode(ids).count("<|im_start|>") == 5
    # the first answer sees exactly what generation would see: the prompt up to its header
    first = labels.index(next(x for x in labels if x != IGNORE_INDEX))
    assert tokenizer.decode(ids[:first]) == chat_prompt(tokenizer, turns[:2])
    rows = tokenize(formats.rows._conversations(Dataset.from_list(CHAT), "chat"), tokenizer)
    assert rows[0]["labels"] == labels


def test_alpaca_records_become_prompt_and_response(tmp_path):
    rows = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Name a colour.", "input": "", "output": "Blue"}] * 5
    d = formats.load_local(write_jsonl(tmp_path / "alpaca.jsonl", rows), val_fraction=0, test_fraction=0)
    got = sorted(zip(d["train"]["prompt"], d["train"]["response"]))
    assert got[0] == ("Add the numbers.\n\n2 and 3", "5") and got[-1] == ("Name a colour.", "Blue")


@pytest.mark.parametrize("turns, match", [
    ([{"content": "hi"}, {"role": "assistant", "content": "hello"}], r"row 1, messages\[0\]: the turn has no 'role'"),
    ([{"role": "human", "content": "hi"}, {"role": "assistant", "content": "hello"}], r"messages\[0\]\.role: unknown role 'human'"),
    ([{"role": "user", "content": "hi"}], r"row 1: the conversation ends on a user turn"),
    ([{"role": "user", "content": "  "}, {"role": "assistant", "content": "hello"}], r"messages\[0\]\.content: the user turn is empty"),
    ([{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}],
     r"messages\[1\]\.role: a 'system' turn may only come first"),
    ([{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}], r"has no user turn"),
    ([], r"'messages' must be a non-empty list"),
])
def test_a_malformed_conversation_names_the_row_and_the_field(tmp_path, turns, match):
    rows = [CHAT[1], {"messages": turns}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=r"bad\.jsonl, row 2" if "row 1" not in match else "row 2"):
        formats.load_local(path, val_fraction=0, test_fraction=0)
    with pytest.raises(ValueError, match=match):
        formats.check_conversation(turns, 1, "data")
