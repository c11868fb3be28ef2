"""kit.data: synthetic tasks, local/hub loading, chat formatting with answer-only labels,
overflow policies, collation and the batch stream."""
import datetime
import json
import re
import time

import pytest
import torch

from kit import data as kd


# ----------------------------------------------------------------------------- tasks
@pytest.mark.parametrize("task", kd.TASKS)
def test_make_task_is_deterministic_under_seed(task):
    a = kd.make_task(task, n_train=30, n_val=5, n_test=10, seed=3)
    b = kd.make_task(task, n_train=30, n_val=5, n_test=10, seed=3)
    c = kd.make_task(task, n_train=30, n_val=5, n_test=10, seed=4)
    for split in ("train", "validation", "test"):
        assert a[split].to_dict() == b[split].to_dict()
    assert a["train"]["prompt"] != c["train"]["prompt"]
    assert {k: len(v) for k, v in a.items()} == {"train": 30, "validation": 5, "test": 10}
    assert a["train"].column_names == ["prompt", "response"]


@pytest.mark.parametrize("task", kd.TASKS)
def test_splits_are_disjoint_and_test_split_is_stable(task):
    d = kd.make_task(task, n_train=200, n_val=30, n_test=50, seed=0)
    sets = {s: set(d[s]["prompt"]) for s in d}
    assert sum(len(v) for v in sets.values()) == 280  # no duplicates inside a split
    assert not sets["train"] & sets["test"]
    assert not sets["train"] & sets["validation"]
    assert not sets["validation"] & sets["test"]
    # more training data does not change the test set
    bigger = kd.make_task(task, n_train=300, n_val=30, n_test=50, seed=0)
    assert bigger["test"]["prompt"] == d["test"]["prompt"]


def test_dates_responses_are_the_dates_the_prompts_describe():
    d = kd.make_task("dates", n_train=120, n_val=0, n_test=0, seed=1)
    styles_seen = set()
    for prompt, response in zip(d["train"]["prompt"], d["train"]["response"]):
        date = datetime.date.fromisoformat(response)
        written = prompt.split(": ", 1)[1]
        matches = [s for s in kd.DATE_STYLES if kd.write_date(date, s) == written]
        assert matches, (prompt, response)
        styles_seen.update(matches)
    assert len(styles_seen) >= 4


def test_extract_responses_are_json_with_the_facts_of_the_sentence():
    d = kd.make_task("extract", n_train=100, n_val=0, n_test=0, seed=2)
    shapes = set()
    for prompt, response in zip(d["train"]["prompt"], d["train"]["response"]):
        obj = json.loads(response)
        assert list(obj) == ["name", "age", "city"]
        assert isinstance(obj["age"], int)
        sentence = prompt.split(": ", 1)[1]
        assert obj["name"] in sentence and obj["city"] in sentence
        # the age is stated, or one step of arithmetic away from the numbers stated
        age, nums = obj["age"], [int(x) for x in re.findall(r"\d+", sentence)]
        assert (age in nums or kd.number_words(age) in sentence or age + 1 in nums
                or any(x - y == age or x + y == age for x in nums for y in nums)), sentence
        shapes.add(re.sub(r"\d+", "#", sentence.replace(obj["name"], "N")))
    assert len(shapes) > 30  # varied, not one template


def test_make_task_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dates"):
        kd.make_task("nope")
    with pytest.raises(ValueError, match="n_train"):
        kd.make_task("dates", n_train=-1)


def test_retention_probe_is_a_list_of_distinct_question_answer_pairs():
    assert 20 <= len(kd.RETENTION_PROBE) <= 30
    questions = [q for q, _ in kd.RETENTION_PROBE]
    assert len(set(questions)) == len(questions)
    assert all(q.endswith("?") and a for q, a in kd.RETENTION_PROBE)


# ----------------------------------------------------------------------------- formatting
def test_labels_mask_the_prompt_exactly(tokenizer):
    d = kd.make_task("extract", n_train=6, n_val=2, n_test=2, seed=0)
    tok = kd.tokenize(d, tokenizer, max_length=256)
    assert set(tok) == {"train", "validation", "test"}
    for row in tok["train"]:
        ids, labels = row["input_ids"], row["labels"]
        assert len(ids) == len(labels) == len(row["attention_mask"])
        answer = [t for t, l in zip(ids, labels) if l != kd.IGNORE_INDEX]
        assert [l for l in labels if l != kd.IGNORE_INDEX] == answer
        assert tokenizer.decode(answer) == row["response"] + "<|im_end|>"
        n_prompt = len(ids) - len(answer)
        assert labels[:n_prompt] == [kd.IGNORE_INDEX] * n_prompt  # the mask is a prefix
        assert tokenizer.decode(ids[:n_prompt]) == kd.chat_prompt(tokenizer, row["prompt"])


def test_chat_prompt_ends_with_the_assistant_header(tokenizer):
    text = kd.chat_prompt(tokenizer, "Hi")
    assert "<|im_start|>user\nHi<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def _long_example(n_words=200, answer="2021-03-05"):
    from datasets import Dataset
    return Dataset.from_dict({"prompt": ["short", "word " * n_words], "response": ["ok", answer]})


def test_overflow_truncate_keeps_the_whole_answer_and_the_prompt_end(tokenizer):
    with pytest.warns(kd.OverflowWarning, match="truncated the prompt of 1, dropped 0"):
        tok = kd.tokenize(_long_example(), tokenizer, max_length=64)
    assert len(tok) == 2
    row = tok[1]
    assert len(row["input_ids"]) == 64
    answer = [t for t, l in zip(row["input_ids"], row["labels"]) if l != kd.IGNORE_INDEX]
    assert tokenizer.decode(answer) == "2021-03-05<|im_end|>"
    prompt = tokenizer.decode(row["input_ids"]).split("2021-03-05")[0]
    assert prompt.endswith("word <|im_end|>\n<|im_start|>assistant\n")  # the end is kept
    assert not prompt.startswith("<|im_start|>system")                   # the head is cut


def test_overflow_truncate_drops_an_answer_that_cannot_fit(tokenizer):
    with pytest.warns(kd.OverflowWarning, match="dropped 1"):
        tok = kd.tokenize(_long_example(5, answer="answer " * 80), tokenizer, max_length=64)
    assert tok["prompt"] == ["short"]


def test_overflow_drop_and_error(tokenizer):
    with pytest.warns(kd.OverflowWarning, match="dropped 1"):
        tok = kd.tokenize(_long_example(), tokenizer, max_length=64, overflow="drop")
    assert tok["prompt"] == ["short"]
    with pytest.raises(ValueError, match="max_length=64"):
        kd.tokenize(_long_example(), tokenizer, max_length=64, overflow="error")
    with pytest.raises(ValueError, match="overflow must be one of"):
        kd.tokenize(_long_example(), tokenizer, overflow="cut")


def test_tokenize_rejects_empty_and_wrong_input(tokenizer):
    from datasets import Dataset
    with pytest.raises(ValueError, match="empty"):
        kd.tokenize(Dataset.from_dict({"prompt": [], "response": []}), tokenizer)
    with pytest.raises(ValueError, match="'response' column"):
        kd.tokenize(Dataset.from_dict({"prompt": ["a"], "answer": ["b"]}), tokenizer)
    with pytest.raises(ValueError, match="Dataset or DatasetDict"):
        kd.tokenize([{"prompt": "a", "response": "b"}], tokenizer)


# ----------------------------------------------------------------------------- batches
def test_collate_pads_right_with_minus_100():
    feats = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
             {"input_ids": [8], "attention_mask": [1], "labels": [8]}]
    b = kd.collate(feats, pad_token_id=2)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert all(v.dtype == torch.long for v in b.values())


def test_batches_are_endless_deterministic_and_cover_each_epoch(tokenizer):
    d = kd.make_task("dates", n_train=10, n_val=0, n_test=0, seed=0)
    tok = kd.tokenize(d["train"], tokenizer)

    def rows(batch):  # the unpadded rows of a batch
        return [tuple(ids[:int(m.sum())].tolist())
                for ids, m in zip(batch["input_ids"], batch["attention_mask"])]

    first = [rows(b) for b, _ in zip(kd.batches(tok, 5, 2, seed=1), range(6))]
    again = [rows(b) for b, _ in zip(kd.batches(tok, 5, 2, seed=1), range(6))]
    assert first == again
    other = [rows(b) for b, _ in zip(kd.batches(tok, 5, 2, seed=2), range(6))]
    assert first != other
    # 10 examples, batch 5: batches (0, 1), (2, 3), (4, 5) are three epochs
    epochs = [sorted(r for b in first[i:i + 2] for r in b) for i in (0, 2, 4)]
    assert epochs[0] == epochs[1] == epochs[2] == sorted(tuple(x) for x in tok["input_ids"])
    assert first[0:2] != first[2:4]  # ... each in a new order
    uneven = kd.batches(tok, 4, 2)
    assert [next(uneven)["input_ids"].shape[0] for _ in range(5)] == [4] * 5
    ordered = next(kd.batches(tok, 3, 2, shuffle=False))
    assert ordered["input_ids"][0, :len(tok[0]["input_ids"])].tolist() == tok[0]["input_ids"]
    with pytest.raises(ValueError, match="tokenize"):
        next(kd.batches(d["train"], 4, 2))
    with pytest.raises(ValueError, match="batch_size"):
        next(kd.batches(tok, 0, 2))


def test_batches_resume_and_shard_the_one_stream(tokenizer):
    tok = kd.tokenize(kd.make_task("dates", n_train=12, n_val=0, n_test=0, seed=0)["train"], tokenizer)
    ids = lambda stream, n: [b["input_ids"].tolist() for b, _ in zip(stream, range(n))]  # noqa: E731
    whole = ids(kd.batches(tok, 4, 2, seed=3), 8)
    assert ids(kd.batches(tok, 4, 2, seed=3, start=5), 3) == whole[5:8]  # resume mid-epoch
    rank0 = ids(kd.batches(tok, 4, 2, seed=3, shard=(0, 2)), 4)
    rank1 = ids(kd.batches(tok, 4, 2, seed=3, shard=(1, 2)), 4)
    assert rank0 == whole[0::2] and rank1 == whole[1::2] and rank0 != rank1
    assert ids(kd.batches(tok, 4, 2, seed=3, shard=(1, 2), start=2), 2) == whole[5::2][:2]
    with pytest.raises(ValueError, match="shard"):
        next(kd.batches(tok, 4, 2, shard=(2, 2)))
    with pytest.raises(ValueError, match="start"):
        next(kd.batches(tok, 4, 2, start=-1))


# ----------------------------------------------------------------------------- your data
ROWS = [{"question": f"q{i}", "answer": f"a{i}", "extra": i} for i in range(20)]


def test_load_local_jsonl_with_column_mapping(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    d = kd.load_local(path, prompt_column="question", response_column="answer", seed=0)
    assert {k: len(v) for k, v in d.items()} == {"train": 16, "validation": 2, "test": 2}
    assert d["train"].column_names == ["prompt", "response"]
    pairs = [(p, r) for s in d.values() for p, r in zip(s["prompt"], s["response"])]
    assert sorted(pairs) == sorted((r["question"], r["answer"]) for r in ROWS)
    again = kd.load_local(path, prompt_column="question", response_column="answer", seed=0)
    assert again["test"].to_dict() == d["test"].to_dict()


def test_load_local_csv_with_column_mapping(tmp_path):
    path = tmp_path / "mine.csv"
    lines = ["question,answer,extra"] + [f'"{r["question"]}, ok",{r["answer"]},{r["extra"]}'
                                        for r in ROWS]
    path.write_text("\n".join(lines) + "\n")
    d = kd.load_local(path, "question", "answer", val_fraction=0.0, test_fraction=0.25)
    assert {k: len(v) for k, v in d.items()} == {"train": 15, "validation": 0, "test": 5}
    assert all(p.endswith(", ok") for p in d["train"]["prompt"])


def test_load_local_errors_name_the_fix(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS))
    with pytest.raises(ValueError, match=r"prompt_column='prompt'.*question"):
        kd.load_local(path)
    with pytest.raises(ValueError, match="not a file"):
        kd.load_local(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{oops\n')
    with pytest.raises(ValueError, match="line 2"):
        kd.load_local(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        kd.load_local(empty)
    blanks = tmp_path / "blanks.csv"
    blanks.write_text("prompt,response\na,\n,b\n")
    with pytest.raises(ValueError, match="no examples"):
        kd.load_local(blanks)
    text = tmp_path / "x.txt"
    text.write_text("hi")
    with pytest.raises(ValueError, match=".jsonl"):
        kd.load_local(text)
    with pytest.raises(ValueError, match="val_fraction"):
        kd.load_local(path, "question", "answer", val_fraction=1.5)
    tiny = tmp_path / "two.jsonl"
    tiny.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n')
    with pytest.raises(ValueError, match="nothing left for training"):
        kd.load_local(tiny, val_fraction=0.5, test_fraction=0.5)


def test_load_hub_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ValueError, match="load_local"):
        kd.load_hub("some/dataset", "question", "answer")
    assert time.perf_counter() - start < 5
