"""Talk to it, ship it: the chat function (the widget's engine) and the terminal chat on
tiny-llama; what the kit exports loads in plain transformers and plain peft."""
import pytest
import torch
from peft import PeftModel
from test_adapters import sample_batch, with_adapter
from transformers import AutoModelForCausalLM

from kit.commands import chat
from kit.engine import compare as side_by_side
from kit.engine.adapters import load_adapter, logits, save_adapter, save_merged
from kit.machine.models import load_model


@pytest.fixture
def two_adapters(tmp_path):
    """tiny-llama with two saved adapters (non-zero B), loaded back as "default" and "second"."""
    model, tok = load_model("tiny-llama")
    save_adapter(with_adapter(model, seed=1), tmp_path / "first")
    model, tok = load_model("tiny-llama")
    save_adapter(with_adapter(model, seed=2), tmp_path / "second")
    base, tok = load_model("tiny-llama")
    peft_model = load_adapter(base, tmp_path / "first")
    load_adapter(peft_model, tmp_path / "second", adapter_name="second")
    return peft_model, tok, tmp_path


def test_compare_answers_with_base_each_adapter_and_merged_streaming(two_adapters):
    model, tok, _ = two_adapters
    pieces = {}
    merged = save_merged(model, two_adapters[2] / "merged", tok, dtype=torch.float32)
    merged_model = AutoModelForCausalLM.from_pretrained(merged["path"])
    replies = side_by_side.compare(model, tok, "Say hi.", merged=merged_model, max_new_tokens=12,
                           on_text=lambda name, piece: pieces.setdefault(name, []).append(piece))
    assert list(replies) == ["base", "default", "second", "merged"]
    plain, _ = load_model("tiny-llama")
    assert replies["base"] == side_by_side.answer(plain, tok, "Say hi.", max_new_tokens=12)   # adapters off = base
    assert replies["merged"] == replies["default"]                   # merged = the active adapter
    for name, text in replies.items():                               # what streamed is the answer
        assert "".join(pieces.get(name, [])).strip() == text
    assert model.active_adapter == "default"                         # compare left it as it was
    with pytest.raises(ValueError, match="needs a model with adapters"):
        side_by_side.compare(plain, tok, "hi")


def test_the_terminal_chat_and_an_adapter_that_does_not_fit(two_adapters, monkeypatch, capsys):
    _, _, folder = two_adapters
    said = iter(["Say hi.", ""])
    monkeypatch.setattr("builtins.input", lambda _: next(said))
    assert chat.main(["--adapter", str(folder / "first"), "--base", "tiny-llama",
                      "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "[base]" in out and "[default]" in out
    assert chat.main(["--adapter", str(folder / "first"), "--base", "smollm2-135m"]) == 2
    assert "does not fit the base model 'smollm2-135m'" in capsys.readouterr().err
    assert chat.main(["--adapter", str(folder / "nothing-here")]) == 2


def test_exports_load_in_plain_transformers_and_plain_peft(two_adapters, tmp_path):
    model, tok, folder = two_adapters
    batch = sample_batch(tok)
    model.set_adapter("second")
    want = logits(model, batch)
    # the merged 16-bit model: plain transformers loads it; its logits are the merged model's
    info = save_merged(model, tmp_path / "merged16", tok, dtype=torch.bfloat16, batch=batch)
    assert info["merge"]["max_logit_diff"] < 1e-4 and info["dtype"] == "bfloat16"
    loaded = AutoModelForCausalLM.from_pretrained(info["path"])
    assert next(loaded.parameters()).dtype == torch.bfloat16 and not hasattr(loaded, "peft_config")
    again = save_merged(model, tmp_path / "merged16-again", tok, dtype=torch.bfloat16)
    assert torch.equal(logits(loaded, batch), logits(AutoModelForCausalLM.from_pretrained(again["path"]), batch))
    assert (logits(loaded, batch) - want).abs().max() < 0.1          # bf16 rounding of the weights
    # the adapter alone: plain peft puts it on the base and computes the same logits
    base, _ = load_model("tiny-llama")
    theirs = PeftModel.from_pretrained(base, str(folder / "second"))
    assert torch.allclose(logits(theirs, batch), want, atol=1e-5)


def test_a_qlora_adapter_is_dequantized_merged_and_saved(tmp_path):
    model, tok = load_model("tiny-llama", quantization="nf4")
    model = with_adapter(model, seed=3)
    batch = sample_batch(tok)
    info = save_merged(model, tmp_path / "qmerged", tok, dtype=torch.float32, batch=batch)
    assert info["merge"]["method"] == "qlora" and info["merge"]["max_logit_diff"] < 1e-4
    loaded = AutoModelForCausalLM.from_pretrained(info["path"])
    assert not any("4bit" in type(m).__name__ for m in loaded.modules())
    assert (logits(loaded, batch) - logits(model, batch)).abs().max() < 1e-4
