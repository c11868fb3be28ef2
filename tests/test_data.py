"""kit.engine.data: synthetic tasks, local/hub loading, chat formatting with answer-only labels,
overflow policies, collation and the batch stream."""
import csv
import datetime
import json
import re
import time

import pytest
import torch

from kit.engine import data as kd, formats as kf


# ----------------------------------------------------------------------------- tasks
def keys(split) -> list[str]:
    """What identifies an example: its prompt, or its whole conversation (the chat task)."""
    if "messages" in split.column_names:
        return [json.dumps(m) for m in split["messages"]]
    return split["prompt"]


@pytest.mark.parametrize("task", kd.TASKS)
def test_make_task_is_deterministic_under_seed(task):
    a = kd.make_task(task, n_train=30, n_val=5, n_test=10, seed=3)
    b = kd.make_task(task, n_train=30, n_val=5, n_test=10, seed=3)
    c = kd.make_task(task, n_train=30, n_val=5, n_test=10, seed=4)
    for split in ("train", "validation", "test"):
        assert a[split].to_dict() == b[split].to_dict()
    assert keys(a["train"]) != keys(c["train"])
    assert {k: len(v) for k, v in a.items()} == {"train": 30, "validation": 5, "test": 10}
    assert a["train"].column_names == (["messages"] if task == "chat" else ["prompt", "response"])


@pytest.mark.parametrize("task", kd.TASKS)
def test_splits_are_disjoint_and_test_split_is_stable(task):
    d = kd.make_task(task, n_train=200, n_val=30, n_test=50, seed=0)
    sets = {s: set(keys(d[s])) for s in d}
    assert sum(len(v) for v in sets.values()) == 280  # no duplicates inside a split
    assert not sets["train"] & sets["test"]
    assert not sets["train"] & sets["validation"]
    assert not sets["validation"] & sets["test"]
    # more training data does not change the test set
    bigger = kd.make_task(task, n_train=300, n_val=30, n_test=50, seed=0)
    assert keys(bigger["test"]) == keys(d["test"])


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
    d = kf.load_local(path, prompt_column="question", response_column="answer", seed=0)
    assert {k: len(v) for k, v in d.items()} == {"train": 16, "validation": 2, "test": 2}
    assert d["train"].column_names == ["prompt", "response"]
    pairs = [(p, r) for s in d.values() for p, r in zip(s["prompt"], s["response"])]
    assert sorted(pairs) == sorted((r["question"], r["answer"]) for r in ROWS)
    again = kf.load_local(path, prompt_column="question", response_column="answer", seed=0)
    assert again["test"].to_dict() == d["test"].to_dict()


def test_load_local_csv_with_column_mapping(tmp_path):
    path = tmp_path / "mine.csv"
    lines = ["question,answer,extra"] + [f'"{r["question"]}, ok",{r["answer"]},{r["extra"]}'
                                        for r in ROWS]
    path.write_text("\n".join(lines) + "\n")
    d = kf.load_local(path, "question", "answer", val_fraction=0.0, test_fraction=0.25)
    assert {k: len(v) for k, v in d.items()} == {"train": 15, "validation": 0, "test": 5}
    assert all(p.endswith(", ok") for p in d["train"]["prompt"])


def test_load_local_errors_name_the_fix(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS))
    with pytest.raises(ValueError, match=r"prompt_column='prompt'.*question"):
        kf.load_local(path)
    with pytest.raises(ValueError, match="not a file"):
        kf.load_local(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl line 2 is not valid JSON"):
        kf.load_local(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        kf.load_local(empty)
    blanks = tmp_path / "blanks.csv"
    blanks.write_text("prompt,response\na,\n,b\n")
    with pytest.raises(ValueError, match="no examples"):
        kf.load_local(blanks)
    text = tmp_path / "x.txt"
    text.write_text("hi")
    with pytest.raises(ValueError, match=".jsonl"):
        kf.load_local(text)
    with pytest.raises(ValueError, match="val_fraction"):
        kf.load_local(path, "question", "answer", val_fraction=1.5)
    tiny = tmp_path / "two.jsonl"
    tiny.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n')
    with pytest.raises(ValueError, match="nothing left for training"):
        kf.load_local(tiny, val_fraction=0.5, test_fraction=0.5)


def test_load_hub_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ValueError, match="load_local"):
        kf.load_hub("some/dataset", "question", "answer")
    assert time.perf_counter() - start < 5


def write_rows(path, rows):
    """rows (a list of dicts) as the file kind that path's extension names."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=2))
    else:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]),
                                    delimiter="\t" if path.suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    return path


def all_pairs(d):
    return sorted((p, r) for split in d.values()
                  for p, r in zip(split["prompt"], split["response"]))


def test_load_local_reads_jsonl_json_csv_and_tsv_alike(tmp_path):
    rows = [{"question": f"q{i}, with a comma\tand a tab", "answer": f"a{i}", "extra": i}
            for i in range(20)]
    loaded = {kind: kf.load_local(write_rows(tmp_path / f"mine.{kind}", rows),
                                  "question", "answer", seed=5)
              for kind in ("jsonl", "json", "csv", "tsv")}
    expected = sorted((r["question"], r["answer"]) for r in rows)
    for kind, d in loaded.items():
        assert list(d) == ["train", "validation", "test"], kind
        assert all(s.column_names == ["prompt", "response"] for s in d.values()), kind
        assert {k: len(v) for k, v in d.items()} == {"train": 16, "validation": 2, "test": 2}
        assert all_pairs(d) == expected, kind
        # same rows in the same order and the same seed: the same split, whatever the format
        assert d["test"].to_dict() == loaded["jsonl"]["test"].to_dict(), kind
        assert d["validation"].to_dict() == loaded["jsonl"]["validation"].to_dict(), kind


def test_load_local_keeps_text_as_written_and_numbers_become_text(tmp_path):
    rows = [{"prompt": f"p{i}", "response": r}
            for i, r in enumerate(["007", "3.10", "NA", "null", "2021-03-05", "x"])]
    for kind in ("csv", "tsv"):
        d = kf.load_local(write_rows(tmp_path / f"t.{kind}", rows), val_fraction=0, test_fraction=0)
        assert sorted(d["train"]["response"]) == sorted(r["response"] for r in rows), kind
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text('{"prompt": 1, "response": 34}\n{"prompt": "two", "response": true}\n')
    d = kf.load_local(numbers, val_fraction=0, test_fraction=0)
    pairs = sorted(zip(d["train"]["prompt"], d["train"]["response"]))
    assert pairs == [("1", "34"), ("two", "True")]



def test_load_local_csv_names_its_columns_when_one_is_missing(tmp_path):
    path = tmp_path / "qa.tsv"
    path.write_text("question\tanswer\nq1\ta1\n")
    with pytest.raises(ValueError, match=r"response_column='response' is not a column of .*qa\.tsv; "
                                         r"its columns are \['question', 'answer'\]"):
        kf.load_local(path, prompt_column="question")

@pytest.mark.parametrize("n, val, test, sizes", [
    (20, 0.1, 0.1, (16, 2, 2)),
    (30, 0.1, 0.1, (24, 3, 3)),    # round(30 * 0.1) = 3; the library's ceil on floats gives 4
    (10, 0.0, 0.2, (8, 0, 2)),
    (10, 0.3, 0.0, (7, 3, 0)),
    (7, 0.1, 0.1, (5, 1, 1)),      # round(0.7) = 1
    (4, 0.1, 0.1, (4, 0, 0)),      # round(0.4) = 0: too few rows for a held-out example
])
def test_load_local_split_sizes(tmp_path, n, val, test, sizes):
    rows = [{"prompt": f"p{i}", "response": "r"} for i in range(n)]
    path = write_rows(tmp_path / "mine.jsonl", rows)
    d = kf.load_local(path, val_fraction=val, test_fraction=test)
    assert (len(d["train"]), len(d["validation"]), len(d["test"])) == sizes


def test_load_local_same_seed_same_split_other_seed_other_split(tmp_path):
    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(40)]
    path = write_rows(tmp_path / "mine.jsonl", rows)
    a, b, c = (kf.load_local(path, seed=s) for s in (1, 1, 2))
    for split in ("train", "validation", "test"):
        assert a[split].to_dict() == b[split].to_dict()
    assert set(a["test"]["prompt"]) != set(c["test"]["prompt"])
    assert set(a["train"]["prompt"]) != set(c["train"]["prompt"])
    sets = [set(a[s]["prompt"]) for s in ("train", "validation", "test")]
    assert sum(map(len, sets)) == 40 and len(set.union(*sets)) == 40  # disjoint, all rows used


def test_load_local_counts_skipped_empty_rows_in_a_warning(tmp_path):
    path = tmp_path / "holes.jsonl"
    good = [{"q": f"q{i}", "a": f"a{i}"} for i in range(10)]
    holes = [{"q": "", "a": "x"}, {"q": "y", "a": "   "}, {"q": "z", "a": None}, {"q": "w"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in good + holes))
    with pytest.warns(kf.SkippedRowsWarning, match=r"holes\.jsonl: skipped 4 of 14 rows") as caught:
        d = kf.load_local(path, "q", "a", val_fraction=0, test_fraction=0)
    assert len(caught) == 1 and caught[0].filename == __file__  # points at the caller
    assert sorted(d["train"]["prompt"]) == sorted(r["q"] for r in good)
    csv_path = tmp_path / "holes.csv"
    csv_path.write_text("q,a\nq1,a1\nq2,\n,a3\nq4,a4\n")
    with pytest.warns(kf.SkippedRowsWarning, match=r"holes\.csv: skipped 2 of 4 rows"):
        d = kf.load_local(csv_path, "q", "a", val_fraction=0, test_fraction=0)
    assert sorted(d["train"]["prompt"]) == ["q1", "q4"]


@pytest.mark.parametrize("name, text, message", [
    ("broken.jsonl", '{"prompt": "a", "response": "b"}\n\n{"prompt": "c", "response": }\n',
     r"broken\.jsonl line 3 is not valid JSON \(Expecting value\)"),
    ("trailing.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"},\n',
     r"trailing\.jsonl line 2 is not valid JSON \(Extra data\)"),
    ("scalars.jsonl", '{"prompt": "a", "response": "b"}\n"just a string"\n',
     r"scalars\.jsonl line 2 is not a JSON object"),
    ("list.json", '[\n  {"prompt": "a", "response": "b"},\n  {"prompt": "c" "response": "d"}\n]',
     r"list\.json line 3 is not valid JSON"),
])
def test_load_local_malformed_json_names_the_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as caught:
        kf.load_local(path)
    assert "one object like" in str(caught.value)  # ... and says what a line should hold
    # raised "from None": no pyarrow traceback chained to it
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.parametrize("name, text", [
    ("empty.jsonl", ""), ("blank.jsonl", "\n  \n\n"), ("empty.json", "[]"),
    ("empty.csv", ""), ("header.csv", "prompt,response\n"), ("header.tsv", "prompt\tresponse\n"),
])
def test_load_local_empty_files_say_empty(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(path)) + " is empty"):
        kf.load_local(path)


def test_load_local_checks_fractions_before_reading(tmp_path):
    with pytest.raises(ValueError, match=r"test_fraction must be a number in \[0, 1\); got 1"):
        kf.load_local(tmp_path / "not-even-there.jsonl", test_fraction=1)
    with pytest.raises(ValueError, match="val_fraction"):
        kf.load_local(tmp_path / "not-even-there.jsonl", val_fraction=-0.1)


def test_load_hub_picks_columns_and_splits_like_load_local(tmp_path, monkeypatch):
    from datasets import Dataset
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(20)]
    rows.append({"question": "q", "answer": ""})  # skipped
    asked = {}

    def fake_load_dataset(dataset_id, config, split):
        asked.update(dataset_id=dataset_id, config=config, split=split)
        return Dataset.from_list(rows)

    local = kf.load_local(write_rows(tmp_path / "qa.jsonl", rows[:20]), "question", "answer",
                          seed=3)
    monkeypatch.setattr(kf.files, "_offline", lambda: False)
    monkeypatch.setattr(kf.files, "hub_reachable", lambda: True)
    monkeypatch.setattr(kf.files, "load_dataset", fake_load_dataset)
    with pytest.warns(kf.SkippedRowsWarning, match="hub dataset 'me/qa': skipped 1 of 21 rows"):
        hub = kf.load_hub("me/qa", "question", "answer", split="train", seed=3)
    assert asked == {"dataset_id": "me/qa", "config": None, "split": "train"}
    for split in ("train", "validation", "test"):
        assert hub[split].to_dict() == local[split].to_dict()
    with pytest.raises(ValueError, match=r"prompt_column='prompt' is not a column of hub dataset"):
        kf.load_hub("me/qa", "prompt", "answer")
    assert len(kf.load_hub("me/qa", "question", "answer", n=10)["train"]) == 8


# ----------------------------------------------------------------------------- padding
class StandInTokenizer:
    """Only what pad_token_id and end_of_turn read."""
    unk_token_id = 0

    def __init__(self, pad=None, vocab=(), eos=None):
        self.pad_token_id, self.vocab = pad, dict(vocab)
        self.eos_token, self.eos_token_id = ("</s>" if eos is not None else None), eos

    def convert_tokens_to_ids(self, token):
        return self.vocab.get(token, self.unk_token_id)


def test_pad_token_id_is_the_pad_token_else_the_end_of_turn(tokenizer):
    assert kd.pad_token_id(tokenizer) == tokenizer.pad_token_id
    assert kd.pad_token_id(StandInTokenizer(pad=9, vocab={"<|im_end|>": 5}, eos=7)) == 9
    chatml = StandInTokenizer(vocab={"<|im_end|>": 5}, eos=7)
    assert kd.pad_token_id(chatml) == 5 == kd.end_of_turn(chatml)[1]  # not eos (7)
    assert kd.pad_token_id(StandInTokenizer(eos=7)) == 7               # no <|im_end|>: eos
    with pytest.raises(ValueError, match="no pad token.*tokenizer.pad_token ="):
        kd.pad_token_id(StandInTokenizer())


def test_group_by_length_keeps_every_example_and_cuts_padding(tokenizer):
    import random as _random

    from datasets import Dataset

    lengths = [5 + (7 * i) % 90 for i in range(64)]
    order = list(range(64))
    _random.Random(0).shuffle(order)
    grouped = kd.group_by_length(order, lengths, 8, _random.Random(1))
    assert sorted(grouped) == list(range(64))                     # a permutation: nothing lost or repeated
    spread = lambda o: sum(max(lengths[j] for j in o[i:i + 8]) * 8 - sum(lengths[j] for j in o[i:i + 8])
                           for i in range(0, 64, 8))
    assert spread(grouped) < spread(order) / 3                    # much less padding
    rows = [{"prompt": "word " * n, "response": "ok"} for n in lengths]
    tok = kd.tokenize(Dataset.from_list(rows), tokenizer, max_length=512)

    def padding(sampling):
        stream = kd.batches(tok, 8, tokenizer.pad_token_id, seed=0, sampling=sampling)
        masks = [next(stream)["attention_mask"] for _ in range(8)]
        return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
    assert padding("group_by_length") < padding("random") / 2
    with pytest.raises(ValueError, match="sampling must be one of"):
        next(kd.batches(tok, 8, tokenizer.pad_token_id, sampling="by-size"))


def test_padding_does_not_change_the_loss(tiny):
    """The same examples batched randomly or by length give the same token-weighted loss."""
    import random as _random

    from datasets import Dataset

    from kit.engine.evaluate import validation_loss

    model, tok = tiny
    rows = [{"prompt": "tell me " * (1 + (5 * i) % 23), "response": "fine " * (1 + i % 4)} for i in range(24)]
    data = kd.tokenize(Dataset.from_list(rows), tok)
    lengths = [len(x) for x in data["input_ids"]]
    order = list(range(24))
    _random.Random(0).shuffle(order)
    grouped = kd.group_by_length(order, lengths, 6, _random.Random(0))
    plain = validation_loss(model, data.select(order), tok.pad_token_id, batch_size=6)
    by_length = validation_loss(model, data.select(grouped), tok.pad_token_id, batch_size=6)
    assert by_length["tokens"] == plain["tokens"]
    assert by_length["loss"] == pytest.approx(plain["loss"], rel=1e-5)


def test_trls_completion_only_loss_trains_the_kits_tokens_and_one_newline(tmp_path):
    """TRL's own answer-only switch (SFTConfig completion_only_loss on prompt/completion
    conversations) against kit.engine.data.tokenize: the same prompt tokens, the same answer tokens up to
    and including <|im_end|>; TRL's sequence also ends with the chat template's newline after
    <|im_end|>, and trains it. One token per example that the kit leaves out."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from kit.machine.models import load_model

    model, tok = load_model("tiny-llama")
    data = kd.make_task("dates", n_train=4, n_val=0, n_test=0)["train"]
    conv = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in data["prompt"]],
                              "completion": [[{"role": "assistant", "content": r}] for r in data["response"]]})
    args = trl.SFTConfig(output_dir=str(tmp_path), report_to="none", completion_only_loss=True, max_length=256,
                         bf16=False)
    theirs = trl.SFTTrainer(model=model, args=args, train_dataset=conv, processing_class=tok).train_dataset
    ours = kd.tokenize(data, tok)
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    for t, o in zip(theirs, ours):
        assert t["input_ids"] == o["input_ids"] + newline
        assert t["labels"] == o["labels"] + newline          # TRL trains the newline after <|im_end|>
