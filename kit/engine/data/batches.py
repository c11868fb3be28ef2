"""Batches: padding (`collate`), the order of the examples (random, by length, sequential),
and the stream the loop reads (`batches`), sharded across processes.
"""
from __future__ import annotations

import random
from typing import Iterator

import torch

from kit.engine.data.tokens import IGNORE_INDEX


# =============================================================================== batches
def collate(features: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of tokenized examples to the longest one (dynamic padding):
    input_ids with pad_token_id, attention_mask with 0, labels with -100."""
    if not features:
        raise ValueError("features is empty: collate needs at least one example.")
    T = max(len(f["input_ids"]) for f in features)
    pad = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    out = {}
    for key, value in pad.items():
        rows = [list(f[key]) + [value] * (T - len(f[key])) for f in features]
        out[key] = torch.tensor(rows, dtype=torch.long)  # (B, T)
    return out


SAMPLING = ("random", "group_by_length", "sequential")   # transformers' train_sampling_strategy names


MEGABATCH = 50   # group_by_length sorts by length within windows of 50 batches (as transformers does)


def group_by_length(order: list[int], lengths: list[int], batch_size: int, rng: random.Random) -> list[int]:
    """`order` (a shuffled epoch) regrouped so that each batch holds examples of similar length:
    sorted by length within windows of MEGABATCH batches, then the batches shuffled. Every
    example still appears once; a batch pads to its own longest example, so less padding."""
    window = batch_size * MEGABATCH
    grouped = []
    for i in range(0, len(order), window):
        grouped += sorted(order[i:i + window], key=lambda j: -lengths[j])
    chunks = [grouped[i:i + batch_size] for i in range(0, len(grouped), batch_size)]
    rng.shuffle(chunks)
    return [j for chunk in chunks for j in chunk]


def batches(tokenized, batch_size: int, pad_token_id: int, seed: int = 0,
            shuffle: bool = True, start: int = 0,
            shard: tuple[int, int] = (0, 1), sampling: str | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """An endless stream of collated batches. Each epoch is a fresh seeded permutation
    (or the original order with shuffle=False); batches run across epoch boundaries,
    so every batch has exactly batch_size examples. Same seed -> same stream.

    sampling: "random" (the default: shuffle=True), "sequential" (shuffle=False) or
           "group_by_length" (each epoch shuffled, then grouped by length: less padding).

    start: skip this many of this stream's batches (resuming at step k with grad_accum a
           skips k * a), without collating them.
    shard: (rank, world) for data-parallel training: process `rank` of `world` takes
           batches rank, rank + world, rank + 2*world, ... of the one seeded stream, so
           the processes see different examples and together cover the data as one
           process would.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}.")
    rank, world = shard
    if not (isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world):
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world; got {shard!r}.")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be an integer >= 0 (batches to skip); got {start!r}.")
    if "input_ids" not in tokenized.column_names:
        raise ValueError("batches needs tokenized data (input_ids, attention_mask, labels); "
                         "call kit.engine.data.tokenize(data, tokenizer) first.")
    if len(tokenized) == 0:
        raise ValueError("The tokenized dataset is empty: there is nothing to batch.")
    sampling = sampling or ("random" if shuffle else "sequential")
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {list(SAMPLING)}; got {sampling!r}.")
    cols = tokenized.select_columns(["input_ids", "attention_mask", "labels"]).to_dict()
    rows = [{k: cols[k][i] for k in cols} for i in range(len(tokenized))]
    lengths = [len(r["input_ids"]) for r in rows]
    rng = random.Random(seed)
    pending: list[int] = []
    position = 0  # index of the next batch in the one global stream
    while True:
        while len(pending) < batch_size:
            order = list(range(len(rows)))
            if sampling != "sequential":
                rng.shuffle(order)
            if sampling == "group_by_length":
                order = group_by_length(order, lengths, batch_size, rng)
            pending += order
        chosen, pending = pending[:batch_size], pending[batch_size:]
        mine = position % world == rank
        position += 1
        if not mine:
            continue
        if start > 0:
            start -= 1
            continue
        yield collate([rows[i] for i in chosen], pad_token_id)
