"""kit.engine.train: one loop for full fine-tuning, LoRA and QLoRA, on the tiny random Llama."""
import math

import pytest
import torch
from datasets import Dataset, DatasetDict

from kit.arch import DEFAULT_LR
from kit.engine.data import tokenize
from kit.engine.data.batches import collate
from kit.engine.train import TrainConfig, answer_loss, finetune, linear_names, lr_at, precision, prepare_model
from kit.machine.device import make_profile
from kit.machine.models import load_model


def doubling(n_train=8, n_val=4):
    """A tiny prompt/response task: 'Double 3' -> '6'."""
    rows = [{"prompt": f"Double {i}", "response": str(2 * i)} for i in range(n_train + n_val)]
    return DatasetDict({"train": Dataset.from_list(rows[:n_train]),
                        "validation": Dataset.from_list(rows[n_train:])})


FAST = dict(max_steps=5, per_device_train_batch_size=2, warmup_steps=0, lr_scheduler_type="constant_with_warmup",
            eval_steps=0, disable_tqdm=True)


@pytest.fixture(scope="module")
def tiny_shared():
    """One tiny-llama for tests that are refused before anything touches the model."""
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def tiny4():
    """tiny-llama with a 4-bit NF4 base (hidden 64 = one blocksize of 64); read-only use."""
    return load_model("tiny-llama", quantization="nf4")


# ---------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_loss_from_the_answer_positions_is_the_models_own_loss(method):
    """answer_loss computes logits only where a label is scored: the same loss and the same
    gradients as model(**batch).loss, on a right-padded batch whose answers start at different
    positions (so the kept positions are a union over rows, not one slice)."""
    model, tok = load_model("tiny-llama")
    model = prepare_model(model, method, TrainConfig(lora_dropout=0.0))
    rows = doubling(n_train=4)["train"].map(lambda r, i: {"prompt": "Please " * (3 * i) + r["prompt"]},
                                            with_indices=True)
    batch = collate(list(tokenize(rows, tok)), tok.pad_token_id)
    scored = (batch["labels"][:, 1:] != -100).any(0)
    assert 0 < int(scored.sum()) < batch["labels"].shape[1] - 1       # some positions are skipped
    losses, grads = [], []
    for loss_of in (lambda: model(**batch).loss, lambda: answer_loss(model, batch)):
        model.zero_grad()
        loss = loss_of()
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    assert torch.allclose(grads[1], grads[0], rtol=1e-4, atol=1e-7)


def test_the_loop_with_answer_logits_only_makes_the_same_run():
    """answer_logits_only changes how the loss is computed, not the run: the same losses step by
    step, up to float rounding; off (the default) the loop's loss is the model's own."""
    runs = []
    for only in (False, True):
        model, tok = load_model("tiny-llama")
        runs.append(finetune(model, tok, doubling(), "lora", learning_rate=3e-2, lora_dropout=0.0,
                             answer_logits_only=only, **FAST).history)
    assert runs[1].config["answer_logits_only"] and not runs[0].config["answer_logits_only"]
    assert runs[1].losses == pytest.approx(runs[0].losses, rel=1e-5)


# ---------------------------------------------------------------------------- losses fall
@pytest.mark.parametrize("method,quantization,lr", [("full", None, 3e-3),
                                                    ("lora", None, 3e-2),
                                                    ("qlora", "nf4", 3e-2)])
def test_loss_falls_and_history_is_recorded(method, quantization, lr):
    model, tok = load_model("tiny-llama", quantization=quantization)
    # Every batch holds the same two examples, so the curve is not batch noise; "validation"
    # is the same two (a random tiny model memorises, it does not generalise).
    two = doubling(n_train=2)["train"]
    data = DatasetDict({"train": two, "validation": two})
    result = finetune(model, tok, data, method, learning_rate=lr, lora_dropout=0.0,
                      trace_batches=True, **(FAST | {"eval_steps": 5}))
    losses = result.history.losses
    assert len(losses) == FAST["max_steps"] and all(math.isfinite(x) for x in losses)
    # A random tiny model learns slowly through adapters (its frozen norms cap the logits),
    # so the bar is a clear, deterministic fall rather than a large one.
    assert sum(losses[-2:]) / 2 < losses[0] - 0.1, losses
    step = result.history.steps[-1]
    assert set(step) == {"step", "loss", "lr", "tokens", "tokens_per_s", "step_time", "memory", "padding",
                         "batch_crc"}
    assert 0 <= step["padding"] < 1
    assert step["step"] == FAST["max_steps"] and step["tokens"] > 0 and step["memory"] > 0
    assert len({s["batch_crc"] for s in result.history.steps}) > 1  # a checksum of each step's data
    assert step["lr"] == pytest.approx(lr)
    assert result.history.memory_kind == "cpu_peak_rss"
    assert [e["step"] for e in result.history.evals] == [0, 5]
    assert result.history.evals[-1]["val_loss"] < result.history.evals[0]["val_loss"]
    trainable = [p for p in result.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    if method != "full":
        assert sum(p.numel() for p in trainable) < 0.05 * sum(p.numel() for p in model.parameters())


def test_two_seeded_runs_give_identical_losses(tokenizer):
    data = doubling()
    runs = []
    for seed in (1, 1, 2):
        model, tok = load_model("tiny-llama")
        cfg = TrainConfig(max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2, eval_steps=0,
                          disable_tqdm=True, seed=seed, lora_dropout=0.1)  # dropout: the seed covers it too
        runs.append(finetune(model, tok, data, "lora", cfg).history.losses)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_overrides_reach_the_adapter_config(tiny):
    model, tok = tiny
    result = finetune(model, tok, doubling(), "lora", lora_r=4, lora_alpha=8,
                      lora_target_modules=["q_proj", "v_proj"], **(FAST | {"max_steps": 1}))
    cfg = result.model.peft_config["default"]
    assert cfg.r == 4 and cfg.lora_alpha == 8 and set(cfg.target_modules) == {"q_proj", "v_proj"}
    assert result.history.config["learning_rate"] == DEFAULT_LR["lora"] == 3e-3   # the study's choice
    assert "batch_crc" not in result.history.steps[0]   # the checksum only when asked for


# ---------------------------------------------------------------------------- gradient checkpointing
@pytest.mark.parametrize("quantization,method", [(None, "lora"), ("nf4", "qlora")])
def test_gradient_checkpointing_with_lora_gives_adapter_gradients(quantization, method):
    model, _ = load_model("tiny-llama", quantization=quantization)
    model = prepare_model(model, method, lora_dropout=0.0, gradient_checkpointing=True)
    assert model.get_base_model().is_gradient_checkpointing
    model.train()
    x = torch.randint(0, 1000, (2, 12))
    model(input_ids=x, labels=x).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)


# ---------------------------------------------------------------------------- pieces
def test_lr_schedule_warms_up_then_decays():
    peak, warmup, total = 1.0, 4, 20
    lrs = [lr_at(s, peak, warmup, total, "cosine") for s in range(total)]
    assert lrs[:warmup] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))
    assert 0 < lrs[-1] < 0.05
    linear = [lr_at(s, peak, 0, 10, "linear") for s in range(10)]
    assert linear[0] == 1.0 and linear[5] == pytest.approx(0.5)
    assert lr_at(15, peak, warmup, total, "constant_with_warmup") == peak


def test_precision_follows_the_device_policy():
    assert precision(make_profile("cpu")) == {"autocast": None, "grad_scaling": False}
    t4 = precision(make_profile("cuda", "Tesla T4", (7, 5), 15 * 2**30, bnb_backend="cuda"))
    assert t4 == {"autocast": torch.float16, "grad_scaling": True}
    a100 = precision(make_profile("cuda", "A100", (8, 0), 40 * 2**30, bnb_backend="cuda"))
    assert a100 == {"autocast": torch.bfloat16, "grad_scaling": False}


def test_linear_names_lists_the_targets(tiny_shared):
    assert linear_names(tiny_shared[0]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                     "up_proj", "v_proj"]


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("overrides,match", [
    ({"lora_r": 0}, r"r must be an integer >= 1, got 0 \(lora_r"),
    ({"lora_r": 2.5}, r"lora_r must be a whole number; got 2.5"),
    ({"lora_alpha": 0}, r"alpha \(lora_alpha\) must be a number > 0"),
    ({"lora_dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
    ({"lora_target_modules": ["qkv"]}, r"target 'qkv' matches no module.*'q_proj'"),
    ({"max_steps": 0}, r"max_steps must be >= 1"),
    ({"per_device_train_batch_size": 0}, r"per_device_train_batch_size must be >= 1"),
    ({"lr_scheduler_type": "step"}, r"lr_scheduler_type must be one of \['cosine', 'linear', 'constant_with_warmup'\]"),
    ({"optim": "paged_adamw_8bit"}, r"paged_adamw_8bit.*needs a CUDA GPU.*optim='adamw_torch'"),
    ({"optim": "lion"}, r"optim must be one of \['adamw_torch', 'adamw_8bit', 'paged_adamw_8bit', 'sgd'\]"),
    ({"lr": 1e-3}, r"Unknown setting\(s\) \['lr'\].*'learning_rate'"),
])
def test_bad_settings_are_refused_with_a_fix(tiny_shared, overrides, match):
    model, tok = tiny_shared
    with pytest.raises(ValueError, match=match):
        finetune(model, tok, doubling(), "lora", **(FAST | overrides))


def test_unknown_method_and_empty_data_are_refused(tiny_shared):
    model, tok = tiny_shared
    with pytest.raises(ValueError, match=r"method must be one of \['full', 'lora', 'qlora'\]"):
        finetune(model, tok, doubling(), "adapter", **FAST)
    empty = DatasetDict({"train": Dataset.from_list([{"prompt": "a", "response": "b"}]).select([])})
    with pytest.raises(ValueError, match=r"data\['train'\] is empty.*make_task"):
        finetune(model, tok, empty, "lora", **FAST)


def test_qlora_needs_a_4bit_base_and_usable_bitsandbytes(tiny_shared, tiny4, monkeypatch):
    with pytest.raises(ValueError, match=r"needs a 4-bit base.*load_model\(name, quantization='nf4'\)"):
        prepare_model(tiny_shared[0], "qlora")
    with pytest.raises(ValueError, match=r"LoRA on a 4-bit base is QLoRA, use method='qlora'"):
        prepare_model(tiny4[0], "lora")
    import kit.engine.train.prepare
    monkeypatch.setattr(kit.engine.train.prepare, "read_profile", lambda: make_profile("cpu", bnb_backend=""))
    with pytest.raises(ValueError, match=r"method='qlora' cannot run here: .*bitsandbytes"):
        prepare_model(tiny4[0], "qlora")


def test_a_loaded_adapter_that_is_not_trainable_is_refused(tiny):
    model, tok = tiny
    model = prepare_model(model, "lora")
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match=r"no trainable parameters.*is_trainable=True"):
        finetune(model, tok, doubling(), "lora", **FAST)


# ---------------------------------------------------------------------------- the real model
@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_adapters_learn_the_dates_task_on_the_bundled_model(method):
    """What notebooks 03 and 05 show on the bundled model (their smoke runs train tiny-llama,
    which learns nothing it can answer): a few steps lower the loss and raise exact match from
    the base's 0 (tests/test_evaluate.py) to some right answers. For QLoRA, notebook 05's
    merge claim too: the merged model in fp32 computes what the adapter model computes, and
    re-quantizing it to NF4 rounds most of the update away (closer to the 4-bit base than to
    the adapter model)."""
    from kit.engine.adapters import disable_adapter, logits, merge
    from kit.engine.data import collate, make_task, tokenize
    from kit.engine.evaluate import exact_match
    from kit.scratch.quant import fake_quantize_model
    model, tok = load_model("smollm2-135m", quantization="nf4" if method == "qlora" else None)
    data = make_task("dates", n_train=32, n_val=4, n_test=8)
    result = finetune(model, tok, data, method, max_steps=8, per_device_train_batch_size=4, eval_steps=0,
                      disable_tqdm=True)
    losses = result.history.losses  # FACTS: 0.92 -> 0.04 within 10 steps of batch 8
    assert losses[-1] < 0.6 * losses[0], losses
    assert exact_match(result.model, tok, data["test"])["correct"] >= 1
    if method == "qlora":
        batch = collate(list(tokenize(data["test"], tok).select(range(4))
                             .select_columns(["input_ids", "attention_mask", "labels"])), tok.pad_token_id)
        merged = merge(result.model, batch)
        assert merged.info["max_logit_diff"] < 1e-2
        requantized = merged.model
        fake_quantize_model(requantized, "nf4", blocksize=64, double_quant=True)   # in place
        mask, requantized_logits = batch["attention_mask"].bool(), logits(requantized, batch)
        to_adapter = (logits(result.model, batch) - requantized_logits)[mask].abs().max().item()
        with disable_adapter(result.model):
            to_base = (logits(result.model, batch) - requantized_logits)[mask].abs().max().item()
        assert to_base < to_adapter


def test_a_batch_that_cannot_fit_on_the_gpu_is_refused(tiny_shared, monkeypatch):
    from kit.engine.train import check_fits
    model, _ = tiny_shared
    cfg = TrainConfig(per_device_train_batch_size=64)
    check_fits(model, "lora", cfg, 512, make_profile("cpu"))  # CPUs: skipped
    t4 = make_profile("cuda", "Tesla T4", (7, 5), 15 * 2**30, bnb_backend="cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (2**20, 15 * 2**30))  # 1 MiB free
    with pytest.raises(ValueError, match=r"per_device_train_batch_size=64 at 512 tokens needs about .* GiB.*"
                                         r"smaller batch.*gradient_checkpointing=True.*qlora"):
        check_fits(model, "lora", cfg, 512, t4)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (14 * 2**30, 15 * 2**30))
    check_fits(model, "lora", TrainConfig(per_device_train_batch_size=4), 512, t4)  # 4 x 512 fits in 14 GiB


# ---------------------------------------------------------------------------- early stopping
def test_plateau_is_read_from_the_evaluations_so_far():
    from types import SimpleNamespace

    from kit.engine.train import Run
    cfg = TrainConfig(early_stopping_patience=2, early_stopping_threshold=0.01)
    run = lambda losses: Run.plateaued(SimpleNamespace(config=cfg, history=SimpleNamespace(
        evals=[{"step": 4 * i, "val_loss": v} for i, v in enumerate(losses)])))
    assert not run([1.0, 0.8])                       # too few evaluations to tell
    assert not run([1.0, 0.8, 0.7])                  # still improving
    assert run([1.0, 0.8, 0.795, 0.85])              # 0.795 beat 0.8 by less than the threshold
    assert not run([1.0, 0.8, 0.85, 0.7])            # improved again within the patience
    assert run([1.0, float("nan"), 1.2, 1.3])        # a diverged evaluation never counts as better
    assert not Run.plateaued(SimpleNamespace(config=TrainConfig(), history=SimpleNamespace(evals=[])))
    assert run([1.0, 0.8, 0.795, 0.792, 0.791])      # a creep, always within 0.01 of 0.8: a plateau
    assert not run([1.0, 0.8, 0.795, 0.789])         # ... until it adds up to more than 0.01


def test_the_best_evaluation_is_where_the_run_last_improved_by_more_than_the_threshold():
    from kit.engine.train import best_evaluation
    creep = [0.9, 0.09, 0.0105, 0.0084, 0.0067, 0.0016, 0.0017, 0.0003]   # a run of the study (steps 0..56)
    assert best_evaluation(creep) == 7                                  # no threshold: the lowest
    assert best_evaluation(creep, 0.002) == 5                           # 0.0003 is within 0.002 of 0.0016
    assert best_evaluation(creep, 0.011) == 2                           # never again 0.011 below 0.0105
    assert best_evaluation([float("nan"), 1.0, float("inf"), 0.5]) == 3
    assert best_evaluation([1.0, float("nan")]) == 0


def test_a_run_that_stops_learning_stops_on_the_plateau(tiny_shared):
    model, tok = load_model("tiny-llama")
    result = finetune(model, tok, doubling(), "lora", **(FAST | {"max_steps": 10, "eval_steps": 1,
                      "learning_rate": 1e-12, "early_stopping_patience": 2, "early_stopping_threshold": 1e-3}))
    assert result.history.stop == "plateau" and result.finished
    assert [e["step"] for e in result.history.evals] == [0, 1, 2] and len(result.history.steps) == 2
    capped = finetune(load_model("tiny-llama")[0], tok, doubling(), "lora", **FAST)
    assert capped.history.stop == "cap"
    with pytest.raises(ValueError, match="early_stopping_patience=2 needs evaluations"):
        finetune(model, tok, doubling(), "lora", **(FAST | {"early_stopping_patience": 2}))
