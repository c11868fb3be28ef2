"""kit.engine.evaluate: batched greedy generation, the exact-match rule, validation loss,
retention. Fast tests use tiny-llama or a stand-in for generate; slow ones the 135M model."""
import math

import pytest
import torch
from datasets import Dataset

from kit.engine import data as kd, evaluate as ke


# ----------------------------------------------------------------------------- generation
def test_batched_generation_equals_one_at_a_time(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    with torch.no_grad():  # larger random weights: varied tokens instead of repeated "\n"
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    model.train()  # generate must switch to eval and back
    prompts = ["Convert the date to ISO 8601 (YYYY-MM-DD): March 5, 2021",
               "Hi",
               "Extract name, age and city as JSON: Maria, 34, moved to Lisbon last year."]
    side = tok.padding_side
    together = ke.generate(model, tok, prompts, max_new_tokens=6, batch_size=3)
    alone = [ke.generate(model, tok, [p], max_new_tokens=6)[0] for p in prompts]
    assert together == alone  # right padding would change the 2nd and 3rd answers
    assert len(set(together)) == 3 and all(together)
    assert tok.padding_side == side and model.training


def test_generate_rejects_bad_arguments(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="list of strings"):
        ke.generate(model, tok, "Hi")
    with pytest.raises(ValueError, match="batch_size"):
        ke.generate(model, tok, ["Hi"], batch_size=0)


class RecordingModel(torch.nn.Module):
    """Stands in for a causal LM: records generate's keyword arguments, answers with one
    end-of-turn token per row."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # generate asks for the device
        self.seen = {}

    def generate(self, input_ids, attention_mask, **kwargs):
        self.seen = kwargs
        eot = torch.full((input_ids.shape[0], 1), kwargs["eos_token_id"])
        return torch.cat([input_ids, eot], dim=1)


def test_generate_pads_with_kit_data_pad_token_id(tiny, monkeypatch):
    tok = tiny[1]
    model = RecordingModel()
    assert ke.generate(model, tok, ["Hi", "Hello there"]) == ["", ""]
    assert model.seen["pad_token_id"] == kd.pad_token_id(tok)
    assert model.seen["eos_token_id"] == kd.end_of_turn(tok)[1]
    monkeypatch.setattr(ke.generation, "pad_token_id", lambda tokenizer: 7)  # the one place that decides
    ke.generate(model, tok, ["Hi"])
    assert model.seen["pad_token_id"] == 7


# ----------------------------------------------------------------------------- exact match
@pytest.mark.parametrize("got, expected, task, ok", [
    ("2021-03-05", "2021-03-05", "dates", True),
    ("  2021-03-05\n", "2021-03-05", None, True),
    ("2021-3-5", "2021-03-05", "dates", False),
    ('{"city": "Lisbon", "age": 34, "name": "Maria"}',
     '{"name": "Maria", "age": 34, "city": "Lisbon"}', "extract", True),    # key order
    ('{"name":"Maria","age":34,\n "city":"Lisbon"}',
     '{"name": "Maria", "age": 34, "city": "Lisbon"}', None, True),         # whitespace
    ('{"name": "Maria", "age": "34", "city": "Lisbon"}',
     '{"name": "Maria", "age": 34, "city": "Lisbon"}', "extract", False),   # "34" != 34
    ('```json\n{"name": "Maria", "age": 34, "city": "Lisbon"}\n```',
     '{"name": "Maria", "age": 34, "city": "Lisbon"}', "extract", False),   # text around
    ('{"name": "Maria", "age": 34}',
     '{"name": "Maria", "age": 34, "city": "Lisbon"}', "extract", False),   # missing key
    ("not json", '{"a": 1}', "extract", False),
])
def test_answers_match_rule(got, expected, task, ok):
    assert ke.answers_match(got, expected, task) is ok


def test_exact_match_counts_with_a_stand_in_generate(monkeypatch):
    data = Dataset.from_dict({
        "prompt": ["p1", "p2", "p3", "p4"],
        "response": ["2021-03-05", '{"name": "A", "age": 3, "city": "B"}', "x", "y"]})
    seen = {}

    def fake_generate(model, tokenizer, prompts, max_new_tokens=48, batch_size=25):
        seen.update(prompts=prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        answers = {"p1": " 2021-03-05 ", "p2": '{"city": "B", "age": 3, "name": "A"}',
                   "p3": "no", "p4": "y"}
        return [answers[p] for p in prompts]

    monkeypatch.setattr(ke.generation, "generate", fake_generate)
    from kit.machine.models import load_model
    tok = load_model("tiny-llama")[1]
    r = ke.exact_match(None, tok, data, batch_size=7)
    assert (r["correct"], r["total"], r["accuracy"]) == (3, 4, 0.75)
    assert [x["ok"] for x in r["examples"]] == [True, True, False, True]
    assert r["examples"][2] == {"prompt": "p3", "expected": "x", "got": "no", "ok": False}
    longest = max(len(tok(e, add_special_tokens=False)["input_ids"]) for e in data["response"])
    assert seen["max_new_tokens"] == longest + 8 and seen["batch_size"] == 7
    r2 = ke.exact_match(None, tok, data, n=2)
    assert (r2["correct"], r2["total"]) == (2, 2) and seen["prompts"] == ["p1", "p2"]
    with pytest.raises(ValueError, match="one split"):
        ke.exact_match(None, tok, kd.make_task("dates", 2, 1, 1))


# ----------------------------------------------------------------------------- loss
def test_validation_loss_is_the_token_weighted_answer_loss(tiny):
    model, tok = tiny
    data = kd.make_task("extract", n_train=5, n_val=0, n_test=0, seed=0)["train"]
    tokenized = kd.tokenize(data, tok)
    model.train()
    r = ke.validation_loss(model, tokenized, tok.pad_token_id, batch_size=3)  # padded batches
    assert model.training
    total, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for row in tokenized:  # one unpadded example at a time, transformers' own loss
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
            n = int((labels[:, 1:] != -100).sum())
            total += model(input_ids=ids, labels=labels).loss.item() * n
            tokens += n
    assert r["tokens"] == tokens
    assert r["loss"] == pytest.approx(total / tokens, rel=1e-4)
    assert r["perplexity"] == pytest.approx(math.exp(r["loss"]))
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="tokenize"):
        ke.validation_loss(model, data, tok.pad_token_id)


def test_the_output_layer_runs_on_answer_positions_only_and_scores_the_same(tiny):
    """validation_loss, answer_scores and the log-probabilities behind the forgetting KL ask the
    model for logits where some row has an answer token only, on batches of similar length, the
    rows' shared beginning run once; the scores, in the items' order, equal those computed from
    the logits at every position in one call."""
    import torch.nn.functional as F

    from kit.engine.evaluate.scoring import _answer_batches
    model, tok = tiny
    data = kd.tokenize(kd.make_task("dates", n_train=0, n_val=0, n_test=6, seed=1)["test"], tok)
    pad = kd.pad_token_id(tok)
    seen, lengths = [], []
    hooks = [model.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1])),
             model.model.register_forward_hook(lambda m, args, kwargs, o: lengths.append(kwargs["input_ids"].shape[1]),
                                               with_kwargs=True)]
    try:
        scores = ke.answer_scores(model, data, pad, batch_size=3)
        lp = ke.reference_log_probs(model, data, pad, batch_size=3)
    finally:
        for hook in hooks:
            hook.remove()

    nll, exact, full_lp, widths = {}, {}, [], []
    with torch.no_grad():
        for inputs, mask, labels, index in _answer_batches(data, pad, 3, torch.device("cpu")):
            widths.append(inputs["input_ids"].shape[1])
            logits = model(**inputs).logits[:, :-1].float()                        # every position
            loss = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
            for row, i in enumerate(index):
                nll[i] = ((loss[row] * mask[row]).sum() / mask[row].sum()).item()
                exact[i] = bool(((logits[row].argmax(-1) == labels[row]) | ~mask[row]).all())
            full_lp.append(F.log_softmax(logits, -1)[mask])
    assert all(k < w - 1 for k, w in zip(seen, widths))          # fewer positions than the sequence's
    assert widths == sorted(widths, reverse=True)                  # batches by length, longest first
    # per batch two calls: the beginning every row shares (system prompt, instruction) for one
    # row, then the rest of every row
    pairs = list(zip(lengths[0::2], lengths[1::2]))
    assert len(lengths) == 8 and all(p >= ke.scoring.SHARED_MIN and p + r == w for (p, r), w in zip(pairs, widths))
    assert scores["nll"] == pytest.approx([nll[i] for i in range(6)], rel=1e-5)
    assert scores["exact"] == [exact[i] for i in range(6)]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(lp, full_lp))


# ----------------------------------------------------------------------------- retention
def test_retention_is_case_insensitive_substring(monkeypatch):
    monkeypatch.setattr(ke.generation, "generate", lambda m, t, prompts, **kw:
                        ["The capital is PARIS.", "I don't know.", "berlin"][:len(prompts)])
    probe = [("Capital of France?", "Paris"), ("Capital of Italy?", "Rome"),
             ("Capital of Germany?", "Berlin")]
    r = ke.retention(None, None, probe)
    assert (r["score"], r["correct"], r["total"]) == (pytest.approx(2 / 3), 2, 3)
    assert r["failures"] == [{"question": "Capital of Italy?", "expected": "Rome",
                              "got": "I don't know."}]


# ----------------------------------------------------------------------------- the 135M model
@pytest.mark.slow
def test_base_model_answers_the_retention_probe(bundled_shared):
    model, tok = bundled_shared
    r = ke.retention(model, tok)
    assert r["score"] >= 0.9, r["failures"]


@pytest.mark.slow
@pytest.mark.parametrize("task", kd.TASKS)
def test_base_model_fails_the_tasks(bundled_shared, task):
    model, tok = bundled_shared
    test = kd.make_task(task, n_train=0, n_val=0, n_test=20, seed=0)["test"]
    r = ke.exact_match(model, tok, test, task=task)
    assert r["accuracy"] <= 0.2, r["examples"][:3]


def test_teacher_forced_exact_is_greedy_decoding_writing_the_reference(bundled_shared):
    model, tok = bundled_shared
    prompts = ["What is the capital of France?", "What is 2 + 2?", "Name a primary colour.",
               "What is the opposite of hot?"]
    own = ke.reference_answers(model, tok, prompts, max_new_tokens=48)     # the model's own greedy answers
    scored = ke.answer_scores(model, kd.tokenize(own, tok), kd.pad_token_id(tok))
    # greedy decoding reproduces itself, end of turn included, where it stopped within 48 tokens
    ended = [len(kd.encode_example(tok, p, a)[1]) - 1 < 48 for p, a in zip(prompts, own["response"])]
    assert scored["exact"] == ended and sum(ended) >= 2
    # one token of each answer changed: no longer what greedy decoding writes, and less likely
    changed = Dataset.from_dict({"prompt": prompts, "response": [a.replace(" ", "  ", 1) + " Yes." for a in own["response"]]})
    worse = ke.answer_scores(model, kd.tokenize(changed, tok), kd.pad_token_id(tok))
    assert worse["exact"] == [False] * 4
    assert all(b > a for a, b, e in zip(scored["nll"], worse["nll"], ended) if e)
    # one pass, several references: KL to itself is 0, per prompt too
    lp = ke.reference_log_probs(model, kd.tokenize(own, tok), kd.pad_token_id(tok))
    d = ke.divergences(model, {"self": lp}, kd.tokenize(own, tok), kd.pad_token_id(tok))["self"]
    assert d["kl"] == pytest.approx(0, abs=1e-6) and len(d["per_item_kl"]) == 4
