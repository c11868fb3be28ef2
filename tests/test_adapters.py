"""kit.engine.adapters: save/load, several adapters on one base, merge (LoRA and QLoRA), full saves."""
import pytest
import torch
from safetensors.torch import load_file

from kit.engine.adapters import (adapter_names, disable_adapter, load_adapter, logits, max_logit_diff, merge,
                                 save_adapter, save_full, set_adapter)
from kit.engine.data import collate, tokenize
from kit.engine.train import is_4bit, prepare_model
from kit.machine.models import load_model

# QLoRA merge tolerance: the adapter model dequantizes the same NF4 weights on the fly, so in
# fp32 (CPU) merged and unmerged logits agree to float rounding; in fp16/bf16 (GPU) to ~1e-2.
QLORA_MERGE_TOL = 1e-4
LORA_MERGE_TOL = 1e-4


def sample_batch(tok):
    from datasets import Dataset
    rows = [{"prompt": "Double 21", "response": "42"}, {"prompt": "Say hi to Ada", "response": "Hi Ada!"}]
    return collate(list(tokenize(Dataset.from_list(rows), tok)), tok.pad_token_id)


def with_adapter(model, seed, targets="all-linear"):
    """Prepare a LoRA model and give its B non-zero values (a test with B = 0 proves nothing)."""
    method = "qlora" if is_4bit(model) else "lora"
    torch.manual_seed(seed)
    model = prepare_model(model, method, lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=targets)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
    return model


def test_save_then_load_gives_identical_logits(tiny, tmp_path):
    model, tok = tiny
    batch = sample_batch(tok)
    model = with_adapter(model, seed=0)
    info = save_adapter(model, tmp_path / "adapter")

    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert info["tensors"] == len(saved) > 0 and info["parameters"] > 0
    assert info["bytes"] == (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size
    assert info["mb"] == pytest.approx(info["bytes"] / 1e6)
    model_bytes = sum(p.numel() * p.element_size() for p in model.get_base_model().parameters())
    assert info["bytes"] < 0.02 * model_bytes  # tiny-llama: ~36 kB against 13 MB
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in info["files"])

    fresh, _ = load_model("tiny-llama")
    reloaded = load_adapter(fresh, info["path"])
    assert max_logit_diff(model, reloaded, batch) == 0.0


def test_untrained_and_wrong_inputs_are_refused(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(ValueError, match=r"needs a model with peft adapters.*save_full"):
        save_adapter(model, tmp_path / "a")
    model = prepare_model(model, "lora")
    with pytest.raises(ValueError, match=r"lora_B .* zero.*untrained.*allow_untrained=True"):
        save_adapter(model, tmp_path / "a")
    assert save_adapter(model, tmp_path / "a", allow_untrained=True)["tensors"] > 0
    with pytest.raises(ValueError, match=r"holds no saved adapter"):
        load_adapter(model, tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"save_adapter\(model, path\)"):
        save_full(model, tmp_path / "full")


def test_merged_lora_equals_the_adapter_model(tiny):
    model, tok = tiny
    batch = sample_batch(tok)
    base_logits = logits(model, batch)
    model = with_adapter(model, seed=1)
    result = merge(model, batch)
    assert result.info["method"] == "lora"
    assert result.info["max_logit_diff"] < LORA_MERGE_TOL
    merged = result.model
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert (logits(merged, batch) - base_logits).abs().max() > 1e-2  # the adapter did change it


def test_qlora_adapter_reloads_and_merges_by_dequantizing(tmp_path):
    model, tok = load_model("tiny-llama", quantization="nf4")
    batch = sample_batch(tok)
    model = with_adapter(model, seed=2, targets=["q_proj", "v_proj", "down_proj"])
    info = save_adapter(model, tmp_path / "qlora")
    reloaded = load_adapter(load_model("tiny-llama", quantization="nf4")[0], info["path"])
    assert max_logit_diff(model, reloaded, batch) == 0.0  # NF4 quantization is deterministic

    result = merge(model, batch)
    print("QLoRA merge info:", result.info)  # the measured difference, for the record
    assert result.info["method"] == "qlora" and result.info["dtype"] == "float32"
    assert result.info["max_logit_diff"] < QLORA_MERGE_TOL
    merged = result.model
    assert not is_4bit(merged) and not any("lora_" in n for n, _ in merged.named_parameters())
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    assert is_4bit(model)  # the adapter model is left intact
    assert max_logit_diff(model, merged, batch) == pytest.approx(result.info["max_logit_diff"])


def test_two_named_adapters_switch_and_disabling_restores_the_base(tiny, tmp_path):
    model, tok = tiny
    batch = sample_batch(tok)
    base_logits = logits(model, batch)
    paths = {}
    for name, seed in (("dates", 3), ("extract", 4)):
        fresh, _ = load_model("tiny-llama")
        paths[name] = save_adapter(with_adapter(fresh, seed), tmp_path / name)["path"]

    model = load_adapter(model, paths["dates"], adapter_name="dates")
    model = load_adapter(model, paths["extract"], adapter_name="extract")
    assert adapter_names(model) == ["dates", "extract"]
    set_adapter(model, "dates")
    dates = logits(model, batch)
    set_adapter(model, "extract")
    extract = logits(model, batch)
    assert (dates - extract).abs().max() > 1e-2
    with disable_adapter(model):
        assert torch.equal(logits(model, batch), base_logits)
    assert torch.equal(logits(model, batch), extract)  # back on after the block
    with pytest.raises(ValueError, match=r"name must be one of the loaded adapters \['dates', 'extract'\]"):
        set_adapter(model, "default")
    with pytest.raises(ValueError, match=r"adapter_name 'dates' is already loaded"):
        load_adapter(model, paths["dates"], adapter_name="dates")


def test_save_full_reloads_identically(tiny, tmp_path):
    from transformers import AutoModelForCausalLM
    model, tok = tiny
    batch = sample_batch(tok)
    model = prepare_model(model, "full")
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(0.01)
    info = save_full(model, tmp_path / "full", tokenizer=tok)
    assert "model.safetensors" in info["files"] and info["bytes"] > 1e6
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in info["files"])
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "full", dtype=torch.float32)
    assert max_logit_diff(model, reloaded, batch) == 0.0
