"""LoRA's variants as TrainConfig knobs: LoRA+ (peft's create_loraplus_optimizer, lora_B at a
ratio of the rate, kept by the loop's own schedule) and DoRA (peft's use_dora: trains, saves,
reloads and merges like LoRA); and the settings they refuse."""
import pytest
import torch

from kit.engine.adapters import load_adapter, max_logit_diff, merge, save_adapter
from kit.engine.data import collate, make_task, tokenize
from kit.engine.train import finetune, prepare_model
from kit.machine.models import load_model


def _batch(tok):
    return collate(list(tokenize(make_task("dates", n_train=4, n_val=0, n_test=0)["train"], tok)), tok.pad_token_id)


def _one_step(tiny, **knobs):
    model, tok = tiny
    torch.manual_seed(0)
    model = prepare_model(model, "lora", lora_dropout=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    finetune(model, tok, make_task("dates", n_train=8, n_val=0, n_test=0), "lora", max_steps=1,
             per_device_train_batch_size=4, learning_rate=1e-3, warmup_steps=0, eval_steps=0,
             lr_scheduler_type="constant_with_warmup", disable_tqdm=True, **knobs)
    return {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters() if n in before}


def test_loraplus_moves_lora_b_ratio_times_as_far_on_the_first_step(tiny):
    # From B = 0 the first step leaves A where it is (its gradient is B^T ...) and moves each B
    # entry by Adam's first step, about the rate: lr alone, then ratio x lr with LoRA+.
    plain = _one_step(tiny, loraplus_lr_ratio=0.0)
    plus = _one_step(load_model("tiny-llama"), loraplus_lr_ratio=16.0)
    b_plain = max(v for n, v in plain.items() if "lora_B" in n)
    b_plus = max(v for n, v in plus.items() if "lora_B" in n)
    assert b_plain == pytest.approx(1e-3, rel=0.05)
    assert b_plus == pytest.approx(16e-3, rel=0.05)
    assert max(v for n, v in plus.items() if "lora_A" in n) == 0.0


def test_dora_trains_saves_reloads_and_merges(tiny, tmp_path):
    model, tok = tiny
    model = prepare_model(model, "lora", use_dora=True, lora_dropout=0.0)
    assert any("lora_magnitude_vector" in n for n, p in model.named_parameters() if p.requires_grad)
    result = finetune(model, tok, make_task("dates", n_train=32, n_val=0, n_test=0), "lora", max_steps=12,
                      per_device_train_batch_size=4, learning_rate=1e-2, eval_steps=0, disable_tqdm=True,
                      use_dora=True)
    losses = result.history.losses
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3                    # it learns
    batch = _batch(tok)
    info = save_adapter(result.model, tmp_path / "dora")
    reloaded = load_adapter(load_model("tiny-llama")[0], info["path"])
    assert max_logit_diff(result.model, reloaded, batch) == 0.0
    assert merge(reloaded, batch).info["max_logit_diff"] < 1e-4


@pytest.mark.parametrize("method,knobs,match", [
    ("full", {"use_dora": True}, "method='full' has none"),
    ("full", {"loraplus_lr_ratio": 16.0}, "method='full' has none"),
    ("lora", {"loraplus_lr_ratio": 0.5}, "slower than lora_A"),
])
def test_variant_settings_that_cannot_work_are_refused(tiny, method, knobs, match):
    model, tok = tiny
    with pytest.raises(ValueError, match=match):
        finetune(model, tok, make_task("dates", n_train=8, n_val=0, n_test=0), method, max_steps=1,
                 eval_steps=0, disable_tqdm=True, **knobs)


def test_dora_on_a_4bit_base_is_refused_before_training():
    model, tok = load_model("tiny-llama", quantization="nf4")
    with pytest.raises(ValueError, match="use_dora with method='qlora'"):
        finetune(model, tok, make_task("dates", n_train=8, n_val=0, n_test=0), "qlora", max_steps=1,
                 eval_steps=0, disable_tqdm=True, use_dora=True)
