"""Scores read from the logits, teacher-forced (no generation): the validation loss, the
forgetting KL against a reference, each test item's answer NLL and exact match.
"""
from __future__ import annotations

import functools
import inspect
import math
import statistics

import torch
import torch.nn.functional as F

from kit.engine.data import IGNORE_INDEX, collate
from kit.engine.evaluate.generation import _device


# =============================================================================== loss
@torch.no_grad()
def validation_loss(model, tokenized, pad_token_id: int, batch_size: int = 8) -> dict:
    """Mean cross entropy over the answer tokens of a tokenized Dataset (labels != -100),
    weighted by tokens: sum of all token losses / number of answer tokens. Computed in eval
    mode (no dropout) without gradients; the model's mode is restored after.
    pad_token_id: the id batches are padded with, kit.engine.data.pad_token_id(tokenizer).
    -> {"loss", "perplexity" (= exp(loss)), "tokens"}"""
    if "labels" not in getattr(tokenized, "column_names", []):
        raise ValueError("validation_loss needs tokenized data (with labels); call "
                         "kit.engine.data.tokenize(data['validation'], tokenizer) first.")
    if len(tokenized) == 0:
        raise ValueError("The tokenized dataset is empty: there is nothing to evaluate.")
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        for inputs, mask, labels, _ in _answer_batches(tokenized, pad_token_id, batch_size, _device(model)):
            logits, mask, labels = _scored_logits(model, inputs, mask, labels)      # (B, K, V)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                     ignore_index=IGNORE_INDEX, reduction="sum").item()
            tokens += int(mask.sum())
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("No answer tokens to score (every label is -100).")
    loss = total / tokens
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": tokens}


def _answer_batches(tokenized, pad_token_id: int, batch_size: int, device):
    """The tokenized rows in collated batches of similar length (longest first, so a batch holds
    little padding), with the mask of answer positions (position t predicts token t+1, so the mask
    and targets are the labels shifted by one) and the rows' indices in `tokenized`: per-item
    scores are put back in its order (`_in_order`)."""
    if "labels" not in getattr(tokenized, "column_names", []):
        raise ValueError("scoring answers needs tokenized data (with labels); call "
                         "kit.engine.data.tokenize(dataset, tokenizer) first.")
    cols = tokenized.select_columns(["input_ids", "attention_mask", "labels"]).to_dict()
    rows = [{k: cols[k][i] for k in cols} for i in range(len(tokenized))]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in index], pad_token_id).items()}
        labels = batch["labels"][:, 1:]
        yield {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, \
            labels != IGNORE_INDEX, labels, index


def _in_order(pairs: list[tuple[int, object]]) -> list:
    """[(row index, value), ...] in any order -> the values in row order."""
    return [v for _, v in sorted(pairs, key=lambda p: p[0])]


def _scored_logits(model, inputs: dict, mask, labels):
    """The next-token logits, in fp32, only at the positions where some row of the batch has an
    answer token: (B, K, V), with the mask and labels cut to the same K positions. Two savings,
    the same numbers: the output layer (hidden size x vocabulary) runs on K positions, not all of
    them (transformers' `logits_to_keep`); and the tokens every row begins with (the chat
    template's system prompt, a task's instruction) run once, their keys and values shared by
    the batch (`_shared_prefix`)."""
    keep = mask.any(0).nonzero().squeeze(1)                                          # (K,)
    ids, attention = inputs["input_ids"], inputs["attention_mask"]
    shared = _shared_prefix(ids, attention, int(keep[0]) if len(keep) else 0)
    if shared:
        out = model(input_ids=ids[:1, :shared], use_cache=True)                     # one row
        cache = out.get("cache") or out.get("past_key_values")   # transformers 5 names it cache
        cache.batch_repeat_interleave(ids.shape[0])
        logits = model(input_ids=ids[:, shared:], attention_mask=attention, use_cache=True,
                       logits_to_keep=keep - shared, **{_cache_name(model): cache}).logits.float()
    else:
        logits = model(**inputs, logits_to_keep=keep).logits.float()
    return logits, mask[:, keep], labels[:, keep]


SHARED_MIN = 8   # shorter common beginnings are not worth a second forward call


def _cache_name(model) -> str:
    """What the model's forward calls the keys and values of earlier tokens: `cache` from
    transformers 5 on, `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_name_of(type(base))


@functools.lru_cache(maxsize=None)
def _cache_name_of(cls) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _shared_prefix(ids, attention, limit: int) -> int:
    """How many leading tokens every row of the batch has in common (all real tokens), at most
    `limit` (the first position whose logits are scored), 0 if fewer than SHARED_MIN."""
    same = ((ids == ids[:1]) & (attention == 1)).all(0).long()                      # (T,)
    n = min(int(same.cumprod(0).sum()), limit)
    return n if n >= SHARED_MIN else 0


@torch.no_grad()
def _log_probs(model, inputs: dict, mask, labels) -> torch.Tensor:
    """log-softmax of the model's next-token logits at the answer positions: (n, V), fp32."""
    logits, mask, _ = _scored_logits(model, inputs, mask, labels)
    return F.log_softmax(logits, -1)[mask]


@torch.no_grad()
def reference_log_probs(reference, tokenized, pad_token_id: int, batch_size: int = 16) -> list:
    """The reference's next-token log-probabilities on every answer token, batch by batch: pass
    the list to `divergence` as its reference to score many models without running the
    reference again (about 4 bytes x vocabulary per answer token)."""
    was_training = reference.training
    reference.eval()
    try:
        return [_log_probs(reference, inputs, mask, labels).cpu()
                for inputs, mask, labels, _ in _answer_batches(tokenized, pad_token_id, batch_size, _device(reference))]
    finally:
        reference.train(was_training)


@torch.no_grad()
def divergences(model, references: dict, tokenized, pad_token_id: int, batch_size: int = 16) -> dict:
    """`divergence` against several references in one pass over the data (the model's forward
    runs once): references maps a name to a model, or to the list `reference_log_probs`
    returned for the same data. -> {name: {"kl", "nll", "reference_nll", "tokens", "per_item_kl"}}
    per_item_kl: each sequence's mean KL over its answer tokens (to resample prompts)."""
    cached = {name: ref if isinstance(ref, list) else reference_log_probs(ref, tokenized, pad_token_id, batch_size)
              for name, ref in references.items()}
    sums = {name: {"kl": 0.0, "nll": 0.0, "reference_nll": 0.0, "per_item_kl": []} for name in cached}
    was_training, tokens = model.training, 0
    model.eval()
    try:
        for i, (inputs, mask, labels, index) in enumerate(_answer_batches(tokenized, pad_token_id, batch_size,
                                                                          _device(model))):
            log_q = _log_probs(model, inputs, mask, labels)                           # (n, V)
            target = labels[mask][:, None]                                            # (n, 1)
            row = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)[mask]  # (n,)
            counts = mask.sum(1)                                                      # answer tokens per row
            for name, ref in cached.items():
                log_p = ref[i].to(log_q.device)
                kl_tok = (log_p.exp() * (log_p - log_q)).sum(1)                       # (n,)
                per_row = torch.zeros(mask.shape[0], device=mask.device).index_add_(0, row, kl_tok)
                out = sums[name]
                out["kl"] += kl_tok.sum().item()
                out["nll"] -= log_q.gather(1, target).sum().item()
                out["reference_nll"] -= log_p.gather(1, target).sum().item()
                out["per_item_kl"] += list(zip(index, (per_row / counts.clamp(min=1)).tolist()))
            tokens += int(mask.sum())
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("No answer tokens to score (every label is -100).")
    return {name: {"kl": v["kl"] / tokens, "nll": v["nll"] / tokens, "reference_nll": v["reference_nll"] / tokens,
                   "tokens": tokens, "per_item_kl": _in_order(v["per_item_kl"])} for name, v in sums.items()}


def divergence(model, reference, tokenized, pad_token_id: int, batch_size: int = 16) -> dict:
    """Forgetting without generation noise. Both models read the same sequences (the general
    prompts and the reference's own answers, teacher-forced); on every answer token we compare
    their next-token distributions p (reference) and q (model):

        kl  = mean over answer tokens of KL(p || q) = sum_v p_v (log p_v - log q_v)   (nats)
        nll = mean over answer tokens of -log q(the reference's token)   (the model's loss on
              the reference's answers; the reference's own nll is its floor)

    Both are 0 / the floor for the reference itself, and grow as the model's weights move away.
    reference: a model; None for a peft model, whose adapters switched off (exactly its base)
    are then the reference; or the list `reference_log_probs` returned for the same data.
    -> {"kl", "nll", "reference_nll", "tokens"}"""
    if reference is None:
        if not hasattr(model, "disable_adapter"):
            raise ValueError("reference=None needs a peft model (its adapters switched off are the "
                             "reference); for a fully fine-tuned model pass the base model.")
        with model.disable_adapter():
            reference = reference_log_probs(model, tokenized, pad_token_id, batch_size)
    out = divergences(model, {"reference": reference}, tokenized, pad_token_id, batch_size)["reference"]
    return {k: out[k] for k in ("kl", "nll", "reference_nll", "tokens")}


# =============================================================================== answers, teacher-forced
@torch.no_grad()
def answer_scores(model, tokenized, pad_token_id: int, batch_size: int = 16) -> dict:
    """Score each item on its reference answer (response + end-of-turn), teacher-forced, in one
    forward pass per batch:

        nll[i]   = mean over the answer's tokens of -log p(token | prompt, answer so far)
        exact[i] = every answer token is the model's most likely next token

    exact[i] holds exactly when greedy decoding writes the reference answer token for token and
    stops (each greedy step sees the same prefix as the teacher-forced one): an exact match
    without generating, stricter than a text comparison that forgives formatting. The NLL is a
    continuous score, so two methods can differ on it where both get an item right or wrong.
    -> {"nll": [per item], "exact": [per item], "mean_nll", "accuracy", "tokens"}"""
    if "labels" not in getattr(tokenized, "column_names", []):
        raise ValueError("answer_scores needs tokenized data (with labels); call "
                         "kit.engine.data.tokenize(data['test'], tokenizer) first.")
    nll, exact, tokens = [], [], 0
    was_training = model.training
    model.eval()
    try:
        for inputs, mask, labels, index in _answer_batches(tokenized, pad_token_id, batch_size, _device(model)):
            logits, mask, labels = _scored_logits(model, inputs, mask, labels)           # (B, K, V)
            loss = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")  # (B, K)
            hit = (logits.argmax(-1) == labels) | ~mask                                  # non-answer: ignored
            counts = mask.sum(1)
            nll += list(zip(index, ((loss * mask).sum(1) / counts.clamp(min=1)).tolist()))
            exact += list(zip(index, hit.all(1).tolist()))
            tokens += int(counts.sum())
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("No answer tokens to score (every label is -100).")
    nll, exact = _in_order(nll), _in_order(exact)
    return {"nll": nll, "exact": exact, "mean_nll": statistics.fmean(nll),
            "accuracy": sum(exact) / len(exact), "tokens": tokens}
