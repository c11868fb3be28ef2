"""kit.machine.bnb_check: bitsandbytes' 4-bit checked against kit.scratch.quant and a backward pass, and QLoRA
right on every CPU. The two faults (FACTS.md) are forced here, so that every machine runs the
paths an AVX512-BF16 or AVX-512 CPU takes:

- the fused bf16 repacking, forced by telling bitsandbytes the CPU has AVX512-BF16 (real
  repacking, whatever kernel this CPU then runs), or faked (bf16 forward, no gradient);
- the per-row block decode of AVX-512 CPUs, faked by a dequantize that counts blocks per row.
"""
import math

import bitsandbytes as bnb
import bitsandbytes.functional as bnbF
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

from kit.engine.adapters import load_adapter, logits, merge, save_adapter
from kit.engine.data import pad_token_id, tokenize
from kit.engine.evaluate import validation_loss
from kit.engine.train import finetune
from kit.machine import bnb_check
from kit.machine.models import load_model, resolve
from kit.scratch import quant

FAST = dict(max_steps=6, per_device_train_batch_size=2, warmup_steps=0, lora_dropout=0.0,
            lr_scheduler_type="constant_with_warmup", eval_steps=0, disable_tqdm=True)


def doubling(n=8):
    rows = [{"prompt": f"Double {i}", "response": str(2 * i)} for i in range(n)]
    return DatasetDict({"train": Dataset.from_list(rows[:2]), "validation": Dataset.from_list(rows[:2])})


@pytest.fixture(autouse=True)
def fresh_check():
    """Each test measures with its own faults: forget what an earlier test measured."""
    bnb_check.check.cache_clear()
    yield
    bnb_check.check.cache_clear()


@pytest.fixture
def avx512bf16(monkeypatch):
    """bitsandbytes believes this CPU has AVX512-BF16: new Linear4bit layers will repack."""
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: True)
    monkeypatch.setattr(bnbF, "has_avx512bf16", lambda: True)


@pytest.fixture
def fake_repacking(monkeypatch):
    """The repacking's behaviour on any CPU: after an eval forward without gradients, a layer
    computes in bf16 and passes no gradient to its input."""
    real = bnb.nn.Linear4bit.forward

    def forward(self, x):
        if self.support_avx512bf16_for_cpu and not self.training and not x.requires_grad:
            self.fake_packed = True
        if getattr(self, "fake_packed", False):
            w = bnbF.dequantize_4bit(self.weight.data, self.weight.quant_state)
            return F.linear(x.detach().bfloat16(), w.bfloat16()).to(x.dtype)
        return real(self, x)

    monkeypatch.setattr(bnb.nn.Linear4bit, "forward", forward)


@pytest.fixture
def per_row_blocks(monkeypatch):
    """The AVX-512 dequantize's behaviour on any CPU: blocks counted per row, so a row whose
    length is not whole blocks reads the wrong absmax."""
    def dequantize_4bit(A, quant_state=None, *args, **kwargs):
        qs = quant_state
        out_f, in_f = qs.shape
        codes = quant.unpack_nibbles(A.view(torch.uint8), out_f * in_f).long().view(out_f, in_f)
        absmax = bnbF.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset if qs.nested else qs.absmax
        per_row = -(-in_f // qs.blocksize)
        index = torch.arange(out_f)[:, None] * per_row + torch.arange(in_f)[None, :] // qs.blocksize
        return (qs.code[codes] * absmax.float()[index.clamp(max=absmax.numel() - 1)]).to(qs.dtype)

    monkeypatch.setattr(bnbF, "dequantize_4bit", dequantize_4bit)


def gradient_probe(model):
    """Record, at every step's backward, the gradient that the last 4-bit down_proj passes to
    its input through the 4-bit matmul (a module backward hook: the adapter's path is not it)."""
    layer = [m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit) and n.endswith("down_proj")][-1]
    seen = []
    layer.register_full_backward_hook(lambda m, grad_in, grad_out: seen.append(grad_in[0]))
    return seen


def evaluate_then_train(model, tok, lr=3e-2):
    """What the notebooks do: score the base (an eval pass without gradients), then train."""
    data = doubling()
    validation_loss(model, tokenize(data["validation"], tok), pad_token_id(tok))
    return finetune(model, tok, data, "qlora", learning_rate=lr, **FAST)


# ---------------------------------------------------------------------------- the oracle
@pytest.mark.parametrize("shape,blocksize", [((128, 256), 64), ((1000, 96), 64), ((576, 576), 128), ((37, 50), 64)])
def test_the_decode_by_hand_of_bitsandbytes_bytes_is_kit_quants_nf4(shape, blocksize):
    w = torch.randn(*shape) * 0.02
    layer = bnb_check._probe_layer(shape, blocksize, "nf4", nested=False, fused=False)
    layer.weight = bnb.nn.Params4bit(w, requires_grad=False, blocksize=blocksize, compress_statistics=False,
                                     quant_type="nf4", module=layer).to("cpu")
    ours = quant.quantize(w, "nf4", blocksize=blocksize).dequantize()
    assert torch.equal(bnb_check.reference_weight(layer.weight), ours)


def test_the_nested_absmax_is_decoded_as_bitsandbytes_codes_it():
    layer = bnb_check._probe_layer((256, 576), 64, "nf4", nested=True, fused=False)
    qs = layer.weight.quant_state
    absmax = bnbF.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
    by_hand = (qs.code[quant.unpack_nibbles(layer.weight.data, 256 * 576).long()].view(-1, 64) * absmax[:, None])
    torch.testing.assert_close(bnb_check.reference_weight(layer.weight), by_hand.view(256, 576), atol=1e-7, rtol=0)


def test_this_cpu_is_exact_or_worked_around_and_the_line_says_which():
    report = bnb_check.preflight()
    assert report.status in ("exact", "worked around") and all(p.ok for p in report.probes)
    assert report.line.startswith(f"bitsandbytes 4-bit on this CPU: {report.status}")
    shapes = {p.shape for p in report.probes}
    assert {(576, 576), (1536, 576), (576, 1536), (128, 96)} <= shapes
    whole_rows = [p for p in report.probes if p.shape[1] % 64 == 0]
    assert all(not p.decoded_by_kit and p.dequantize_error == 0 for p in whole_rows)  # the bundled model's


# ---------------------------------------------------------------------------- the check catches each fault
def test_the_check_catches_forced_repacking(avx512bf16):
    report = bnb_check.check(((576, 576),), fused=True)
    assert report.status == "worked around"
    assert report.workarounds and report.workarounds[0].startswith("fused bf16 repacking switched off")
    assert report.probes[0].ok          # with the repacking off, forward and gradient are right


def test_the_check_catches_a_repacking_that_cuts_the_gradient(fake_repacking):
    report = bnb_check.check(((576, 576),), fused=True)
    assert report.workarounds == ["fused bf16 repacking switched off: after an eval pass it cut the gradient"]
    assert bnb_check.check(((576, 576),), fused=False).status == "exact"


def test_the_check_catches_per_row_blocks_and_decodes_those_shapes_with_kit_quant(per_row_blocks):
    report = bnb_check.check(((576, 576), (128, 96), (1000, 96)), fused=False)
    assert report.status == "worked around"
    by_shape = {p.shape: p for p in report.probes}
    assert not by_shape[(576, 576)].decoded_by_kit and by_shape[(576, 576)].dequantize_error == 0
    for shape in ((128, 96), (1000, 96)):
        p = by_shape[shape]
        assert p.decoded_by_kit and p.dequantize_error > 0.1 and p.ok
    assert any("128 x 96 at block size 64 decoded by kit.scratch.quant" in w for w in report.workarounds)


def test_a_layer_still_wrong_after_the_workarounds_is_refused_naming_layer_shape_and_fix(tiny, monkeypatch):
    model, _ = tiny
    monkeypatch.setattr(bnb_check.probe, "_measure", lambda layer, shape, decoded: bnb_check.Probe(
        tuple(shape), 64, "nf4", 0.0, 0.5, False, False, decoded))
    with pytest.raises(bnb_check.Bnb4bitError, match=r"layer model\.layers\.0\.[\w.]+ \(shape \d+ x \d+, block "
                                                       r"size 64, nf4\).*Fix: load the model without quantization"):
        load_model("tiny-llama", quantization="nf4")


# ---------------------------------------------------------------------------- QLoRA right on every CPU
@pytest.mark.parametrize("fault", ["forced", "faked"])
def test_a_4bit_model_evaluated_then_trained_learns_through_every_4bit_layer(fault, request, avx512bf16):
    if fault == "faked":
        request.getfixturevalue("fake_repacking")
    model, tok = load_model("tiny-llama", quantization="nf4")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)  # protect() switched it off
    seen = gradient_probe(model)
    losses = evaluate_then_train(model, tok).history.losses
    assert sum(losses[-2:]) / 2 < losses[0] - 0.1, losses
    assert len(seen) == FAST["max_steps"] and all(g is not None and g.abs().sum() > 0 for g in seen)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)


def test_without_the_kits_protection_the_same_run_is_cut(avx512bf16, fake_repacking, monkeypatch):
    # the counterfactual: the test above fails when protect() is taken away
    monkeypatch.setattr(bnb_check, "protect", lambda model, verbose=True: None)
    model, tok = load_model("tiny-llama", quantization="nf4")
    seen = gradient_probe(model)
    evaluate_then_train(model, tok)
    assert seen == []                   # no gradient ever went through the 4-bit down_proj


def test_a_model_repacked_outside_the_kit_is_unpacked_then_trains_and_merges(avx512bf16, capsys):
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32)
    folder = resolve("tiny-llama")
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=config, dtype=torch.float32,
                                                 device_map={"": "cpu"})
    tok = load_model("tiny-llama")[1]
    model.eval()
    with torch.no_grad():                # an inference pass as a learner might run one: it repacks
        model(**tok(["Double 3"], return_tensors="pt"))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert all(m.weight.quant_state.packing_format_for_cpu for m in layers)
    seen = gradient_probe(model)
    result = evaluate_then_train(model, tok)
    assert "4-bit layers had been repacked" in capsys.readouterr().out
    assert not any(m.weight.quant_state.packing_format_for_cpu for m in layers)
    assert seen and all(g is not None for g in seen)
    assert result.history.losses[-1] < result.history.losses[0] - 0.1
    batch = tok(["Double 3", "Double 21"], return_tensors="pt", padding=True)
    assert merge(result.model, batch).info["max_logit_diff"] < 1e-4


def rows_of_96(folder, tok):
    """A 1-layer Llama whose rows are not whole blocks of 64 (96 and 160 wide), saved."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=96, intermediate_size=160, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("fault", ["this CPU", "faked"])
def test_qlora_on_rows_that_are_not_whole_blocks_trains_reloads_and_merges(fault, request, tmp_path, tokenizer):
    if fault == "faked":
        request.getfixturevalue("per_row_blocks")
    folder = rows_of_96(tmp_path / "rows96", tokenizer)
    model, tok = load_model(folder, quantization="nf4")
    report = bnb_check.check(((48, 96), (96, 96), (96, 160), (160, 96)), 64, "nf4", True)
    q_proj = model.model.layers[0].self_attn.q_proj
    w = bnb_check.reference_weight(q_proj.weight)
    theirs = bnbF.dequantize_4bit(q_proj.weight.data, q_proj.weight.quant_state)
    if fault == "faked":
        assert (theirs - w).abs().max() > 0.1 * w.abs().max()      # the library path is faulty here ...
    if (theirs - w).abs().max() > 0:
        assert report.status == "worked around" and q_proj.kit_decoded  # ... and the kit decodes it itself
    x = torch.randn(2, 96)
    torch.testing.assert_close(q_proj(x), x @ w.T, atol=1e-5, rtol=1e-5)

    result = evaluate_then_train(model, tok, lr=3e-2)
    assert result.history.losses[-1] < result.history.losses[0] - 0.1, result.history.losses
    batch = tok(["Double 3", "Double 21"], return_tensors="pt", padding=True)
    info = save_adapter(result.model, tmp_path / "adapter")
    reloaded = load_adapter(load_model(folder, quantization="nf4")[0], info["path"])
    assert (logits(reloaded, batch) - logits(result.model, batch)).abs().max() == 0.0
    assert merge(result.model, batch).info["max_logit_diff"] < 1e-4
    assert math.isfinite(validation_loss(reloaded, tokenize(doubling()["validation"], tok), pad_token_id(tok))["loss"])


def test_the_fused_path_is_a_stated_choice_that_prepare_model_takes_back(capsys):
    """fused_inference lets bitsandbytes repack for generation where its fused bf16 kernel exists
    (a CPU with AVX512-BF16): the answers stay within bf16 rounding of the protected model's, and
    training (prepare_model) unpacks it again, saying that the repacking rounded the block
    constants. Elsewhere it changes nothing and says so by returning 0."""
    from kit.engine.train import prepare_model

    model, tok = load_model("tiny-llama", quantization="nf4")
    batch = tok(["Double 3", "Double 21"], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        plain = model(**batch).logits
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    if not bnb_check.has_avx512bf16():           # no fused kernel here: nothing to switch on
        assert bnb_check.fused_inference(model) == 0
        assert not any(m.support_avx512bf16_for_cpu for m in layers)
        return
    assert bnb_check.fused_inference(model) == len(layers) > 0       # every layer may repack now
    with torch.no_grad():
        fused = model(**batch).logits
    assert all(m.weight.quant_state.packing_format_for_cpu for m in layers)
    assert (fused - plain).abs().max() < 0.05 * plain.abs().max()     # bf16 arithmetic, the same answers
    peft_model = prepare_model(model, "qlora", lora_dropout=0.0)     # training: the kit unpacks first
    assert not any(m.weight.quant_state.packing_format_for_cpu for m in layers)
    assert not any(m.support_avx512bf16_for_cpu for m in layers)
    assert "reload the model for its exact weights" in capsys.readouterr().out
    with torch.no_grad(), peft_model.disable_adapter():
        back = peft_model(**batch).logits
    assert (back - plain).abs().max() < 0.01 * plain.abs().max()     # the fp32 path again, bf16 constants
