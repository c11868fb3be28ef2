"""Model loading: offline bundled model, tiny-llama, quantized loads, bad input."""
import time

import pytest
import torch

from kit.arch import MODELS as PRESETS
from kit.machine.models import load_model, parameter_count, quantization_config


def test_tiny_llama_is_small_fast_and_uses_the_bundled_tokenizer():
    load_model("tiny-llama")  # warm the cache
    start = time.time()
    model, tok = load_model("tiny-llama")
    assert time.time() - start < 1.5
    n = parameter_count(model)
    emb = model.get_input_embeddings().weight.numel()
    assert n < 5_000_000 and emb / n > 0.9          # mostly the 49,152-token embedding
    assert len(tok) == 49152 and model.config.vocab_size == 49152


@pytest.mark.slow
def test_bundled_model_answers_paris_offline(bundled_shared, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    model, tok = load_model("smollm2-135m")
    assert time.time() - start < 15  # converted already: seconds, not the 30 s conversion
    assert parameter_count(model) == 134_515_008
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text


@pytest.mark.slow
def test_nf4_footprint_is_under_a_third_of_fp32(bundled_shared):
    fp32 = bundled_shared[0].get_memory_footprint()
    nf4, _ = load_model("smollm2-135m", quantization="nf4")
    import bitsandbytes as bnb
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in nf4.modules())
    ratio = nf4.get_memory_footprint() / fp32
    assert ratio < 1 / 3, ratio
    assert parameter_count(nf4) == parameter_count(bundled_shared[0])


def test_int8_and_fp4_load_on_tiny():
    import bitsandbytes as bnb
    m8, _ = load_model("tiny-llama", quantization="int8")
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in m8.modules())
    m4, _ = load_model("tiny-llama", quantization="fp4")
    layer = next(m for m in m4.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert layer.weight.quant_state.quant_type == "fp4"


def test_double_quant_is_on_by_default_for_4bit():
    conf = quantization_config("nf4", torch.float32)
    assert conf.load_in_4bit and conf.bnb_4bit_use_double_quant
    assert conf.bnb_4bit_quant_type == "nf4"


def test_unknown_model_name_names_the_choices():
    with pytest.raises(ValueError, match=r"Unknown model name 'gpt-5'.*smollm2-135m"):
        load_model("gpt-5")


def test_unsupported_quantization_names_the_choices():
    with pytest.raises(ValueError, match=r"quantization must be one of.*'nf4'.*got 'int2'"):
        load_model("tiny-llama", quantization="int2")


def test_hub_id_offline_fails_fast_with_a_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(ValueError, match=r"not reachable.*smollm2-135m"):
        load_model("someone/some-model-that-is-not-cached")
    assert time.time() - start < 5
    with pytest.raises(ValueError, match="not reachable"):
        load_model("smollm2-360m")


def test_presets_name_hub_ids_for_gpu_users():
    assert PRESETS["smollm2-135m"].hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert any(p.params.startswith("7") for p in PRESETS.values())


def test_local_folder_loads(tmp_path):
    model, tok = load_model("tiny-llama")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, _ = load_model(str(tmp_path))
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(model(ids).logits, again(ids).logits)


def test_4bit_codes_packed_in_bf16_compute_the_same_logits():
    """FSDP needs the 4-bit codes in a float dtype: packed into bf16 instead of uint8, the
    weights take the same bytes and the model computes the same numbers."""
    ids = torch.randint(0, 49152, (2, 12), generator=torch.Generator().manual_seed(0))
    packed = {}
    for storage in (None, torch.bfloat16):
        model, _ = load_model("tiny-llama", quantization="nf4", quant_storage=storage)
        weight = model.model.layers[0].self_attn.q_proj.weight
        with torch.no_grad():
            packed[storage] = (weight.dtype, weight.numel() * weight.element_size(), model(input_ids=ids).logits)
    assert packed[None][0] == torch.uint8 and packed[torch.bfloat16][0] == torch.bfloat16
    assert packed[None][1] == packed[torch.bfloat16][1]
    assert torch.equal(packed[None][2], packed[torch.bfloat16][2])
    with pytest.raises(ValueError, match="quant_storage must be None or one of"):
        quantization_config("nf4", torch.float32, quant_storage=torch.int32)
