"""Tests for kit/scratch/quant/: code books, storage cost, error behaviour, bnb parity."""

import copy
import math

import pytest
import torch
import torch.nn as nn
from conftest import micro_llama as tiny_llama

from kit.scratch.quant import (error_report, fake_quantize_model, fp4_codebook, max_abs_error,  # noqa: E402
                               mse, nf4_codebook, quantize, sqnr_db)

bnbF = pytest.importorskip("bitsandbytes.functional")


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))




# ---------------------------------------------------------------------------
# code books
# ---------------------------------------------------------------------------

def test_nf4_codebook_matches_bitsandbytes():
    ours = nf4_codebook()
    theirs = bnbF.get_4bit_type("nf4", device="cpu")
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    assert torch.equal(ours, theirs)  # in fact bit for bit
    assert ours.shape == (16,) and torch.all(ours[1:] > ours[:-1])
    assert ours[0] == -1 and ours[-1] == 1
    assert (ours > 0).sum() == 8 and (ours < 0).sum() == 7 and (ours == 0).sum() == 1
    assert 1 - 0.5 * (1 / 32 + 1 / 30) == pytest.approx(0.9677083, abs=1e-7)


def test_fp4_codebook_is_e2m1():
    ours = fp4_codebook()
    magnitudes = (ours * 6).abs().unique()
    torch.testing.assert_close(magnitudes, torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6]))
    assert (ours == 0).sum() == 2  # +0 and -0: only 15 distinct values
    theirs = bnbF.get_4bit_type("fp4", device="cpu").sort().values
    differs = ~torch.isclose(ours, theirs, atol=1e-6)
    # bnb's only difference: smallest non-zero magnitude 1/192 instead of 1/12
    assert differs.sum() == 2
    torch.testing.assert_close(theirs[differs].abs(), torch.full((2,), 1 / 192))


# ---------------------------------------------------------------------------
# parity with bitsandbytes
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape,scale", [((128, 256), 1.0), ((37, 50), 3.0), ((1000,), 0.02)])
def test_nf4_blockwise_roundtrip_matches_bitsandbytes(shape, scale):
    w = randn(*shape, seed=1) * scale
    ours = quantize(w, "nf4", blocksize=64)
    packed, state = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4")
    theirs = bnbF.dequantize_4bit(packed, state)

    # unpack bnb's codes: two 4-bit codes per byte, high nibble first
    flat = packed.flatten()
    bnb_codes = torch.stack([flat >> 4, flat & 0xF], dim=1).flatten()[: w.numel()]
    assert torch.equal(bnb_codes, ours.codes.flatten()[: w.numel()])
    torch.testing.assert_close(ours.absmax, state.absmax, atol=0, rtol=0)

    w_hat = ours.dequantize()
    equal = (w_hat == theirs).float().mean().item()
    assert equal >= 0.999
    # every element within one code step (largest NF4 gap times the block absmax)
    step = (nf4_codebook().diff().max() * state.absmax.max()).item()
    assert (w_hat - theirs).abs().max().item() <= step


def test_double_quant_close_to_bitsandbytes():
    w = randn(256, 1024, seed=2)
    plain = quantize(w, "nf4", blocksize=64)
    ours = quantize(w, "nf4", blocksize=64, double_quant=True)
    packed, state = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    theirs = bnbF.dequantize_4bit(packed, state)
    assert state.nested and state.state2.blocksize == 256

    # the 4-bit codes do not depend on double quantization
    assert torch.equal(ours.codes, plain.codes)
    # both recover the absmax constants to well under 1 % (bnb: 8-bit dynamic code, ours: int8)
    true_absmax = plain.absmax
    bnb_absmax = bnbF.dequantize_blockwise(state.absmax, state.state2) + state.offset
    assert ((ours.group_absmax() - true_absmax).abs() / true_absmax).max() < 0.01
    assert ((bnb_absmax - true_absmax).abs() / true_absmax).max() < 0.01
    assert ours.absmax_offset.item() == pytest.approx(state.offset.item(), rel=1e-6)
    # hence the dequantized weights agree to within 1 % of each block's absmax
    block_absmax = true_absmax.repeat_interleave(64).reshape(w.shape)
    assert ((ours.dequantize() - theirs).abs() / block_absmax).max() < 0.01


# ---------------------------------------------------------------------------
# storage cost
# ---------------------------------------------------------------------------

def test_bits_per_param():
    w = randn(256, 1024, seed=3)
    assert quantize(w, "nf4", blocksize=64).bits_per_param == 4.5
    dq = quantize(w, "nf4", blocksize=64, double_quant=True)
    assert dq.bits_per_param == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=0.002)
    assert dq.bits_per_param == pytest.approx(4.127, abs=0.002)
    # codes packed (4 bits = half a byte) + 8-bit absmax + one fp32 per 256 + fp32 mean
    n_blocks = w.numel() // 64
    assert dq.nbytes == w.numel() // 2 + n_blocks + 4 * (n_blocks // 256) + 4
    assert quantize(w, "int8", blocksize=64).bits_per_param == 8.5
    assert quantize(w, "int8", blocksize=None).nbytes == w.numel() + 4
    assert quantize(w, "int", bits=3, blocksize=128).bits_per_param == 3.25
    assert quantize(w, "int8", blocksize="row").bits_per_param == 8 + 32 / 1024
    assert quantize(w, "int8-zeropoint", blocksize="row").nbytes == w.numel() + 256 * 5


# ---------------------------------------------------------------------------
# quantization error
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["int", "zeropoint"])
@pytest.mark.parametrize("blocksize", [None, "row", 64])
def test_error_falls_as_bits_rise(kind, blocksize):
    w = randn(64, 256, seed=4)
    errors = [mse(w, quantize(w, kind, bits=b, blocksize=blocksize).dequantize()) for b in range(2, 9)]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    # each extra bit halves the step: about 6 dB more SQNR per bit
    sqnr = [10 * math.log10(w.pow(2).mean().item() / e) for e in errors]
    per_bit = (sqnr[-1] - sqnr[2]) / (8 - 4)
    assert 5.0 < per_bit < 7.0


def test_four_bit_families_ranked():
    w = randn(64, 256, seed=5)
    err = {k: mse(w, quantize(w, k, blocksize=64).dequantize()) for k in ["fp4", "nf4", "int8"]}
    err["int4"] = mse(w, quantize(w, "int", bits=4, blocksize=64).dequantize())
    # NF4 suits normal weights best among 4-bit types; 8 bits beat all 4-bit ones
    assert err["nf4"] < err["fp4"] and err["nf4"] < err["int4"]
    assert err["int8"] < err["nf4"] / 100


@pytest.mark.parametrize("kind,bits", [("int8", None), ("int", 4), ("nf4", None), ("fp4", None),
                                       ("int8-zeropoint", None)])
def test_blockwise_beats_per_tensor_with_outliers(kind, bits):
    w = randn(64, 256, seed=6)
    w.view(-1)[torch.randperm(w.numel(), generator=torch.Generator().manual_seed(0))[:8]] = 50.0
    per_tensor, per_row, block = (
        mse(w, quantize(w, kind, bits=bits, blocksize=b).dequantize()) for b in (None, "row", 64)
    )
    assert block < per_row < per_tensor
    assert block < per_tensor / 10


def test_roundtrip_basics():
    w = randn(16, 40, seed=7).to(torch.bfloat16)
    for kind in ["int8", "int8-zeropoint", "fp4", "nf4"]:
        w_hat = quantize(w, kind, blocksize=32).dequantize()
        assert w_hat.shape == w.shape and w_hat.dtype == torch.bfloat16
    # per-tensor absmax int8: error at most half a step (absmax / 127 / 2)
    w = randn(16, 40, seed=8)
    step = w.abs().max().item() / 127
    assert max_abs_error(w, quantize(w, "int8", blocksize=None).dequantize()) <= step / 2 + 1e-6
    # the absmax itself and zeros are exact
    qt = quantize(w, "nf4", blocksize=None)
    assert qt.dequantize().abs().max() == w.abs().max()
    zeros = quantize(torch.zeros(10, 10), "nf4").dequantize()
    assert torch.equal(zeros, torch.zeros(10, 10))
    assert torch.equal(quantize(torch.zeros(3, 5), "int8-zeropoint").dequantize(), torch.zeros(3, 5))


def test_error_measures():
    w = randn(100, seed=9)
    assert sqnr_db(w, 0.9 * w) == pytest.approx(20.0, abs=1e-4)  # noise = 1% of signal power
    assert sqnr_db(w, w) == math.inf
    assert mse(w, w + 0.5) == pytest.approx(0.25)
    assert max_abs_error(w, w - 0.5) == pytest.approx(0.5)
    report = error_report(w, quantize(w, "nf4", blocksize=50))
    assert set(report) >= {"mse", "max_abs_error", "sqnr_db", "bits_per_param", "nbytes"}
    assert report["bits_per_param"] == 4 + 32 / 50
    assert 15 < report["sqnr_db"] < 30


# ---------------------------------------------------------------------------
# whole models
# ---------------------------------------------------------------------------

def test_fake_quantize_model():
    base = tiny_llama()
    model = copy.deepcopy(base)
    summary = fake_quantize_model(model, "nf4", blocksize=64)
    assert len(summary["layers"]) == 14 and "lm_head" not in summary["layers"]
    assert summary["bits_per_param"] == 4.5
    assert summary["params"] == sum(
        m.weight.numel() for n, m in base.named_modules()
        if isinstance(m, nn.Linear) and n != "lm_head"
    )
    q0 = model.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(q0, base.model.layers[0].self_attn.q_proj.weight)
    assert len(q0.unique()) <= 16 * (q0.numel() // 64)  # at most 16 levels per block
    assert torch.equal(model.lm_head.weight, base.lm_head.weight)
    assert torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)

    # error falls with bits, including widths bitsandbytes has no kernels for (2, 3)
    errors = []
    for bits in range(2, 9):
        m = copy.deepcopy(base)
        s = fake_quantize_model(m, "int", bits=bits, blocksize=64)
        assert s["bits_per_param"] == bits + 0.5
        errors.append(s["mse"])
    assert all(a > b for a, b in zip(errors, errors[1:]))

    only_qv = copy.deepcopy(base)
    s = fake_quantize_model(only_qv, "int", bits=3, targets=["q_proj", "v_proj"])
    assert len(s["layers"]) == 4
    assert torch.equal(only_qv.model.layers[0].self_attn.k_proj.weight,
                       base.model.layers[0].self_attn.k_proj.weight)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("blocksize", [0, -64, 2.5, "blocks", True])
def test_bad_blocksize(blocksize):
    with pytest.raises(ValueError, match=r"blocksize must be a positive integer.*blocksize=64"):
        quantize(randn(8, 8), "nf4", blocksize=blocksize)


def test_bad_kind_and_bits():
    w = randn(8, 8)
    with pytest.raises(ValueError, match=r"kind must be one of .*'nf4'.*got 'int3'"):
        quantize(w, "int3")
    for bits in (1, 9, 4.0):
        with pytest.raises(ValueError, match=r"bits must be an integer in 2\.\.8"):
            quantize(w, "int", bits=bits)
    with pytest.raises(ValueError, match=r"kind='nf4' always uses 4 bits.*kind='int'"):
        quantize(w, "nf4", bits=3)
    with pytest.raises(ValueError, match="double_quant=True needs a symmetric kind"):
        quantize(w, "int8-zeropoint", double_quant=True)
    with pytest.raises(ValueError, match="blocksize='row' needs a tensor with >= 2 dims"):
        quantize(randn(8), "int8", blocksize="row")
    with pytest.raises(TypeError, match="w must be a non-empty floating-point"):
        quantize(torch.arange(8), "int8")
    with pytest.raises(ValueError, match=r"target 'x_proj' matches no module.*Linear modules available.*'q_proj'"):
        fake_quantize_model(tiny_llama(), "nf4", targets=["x_proj"])
    with pytest.raises(ValueError, match="kind must be one of"):
        fake_quantize_model(nn.Linear(4, 4), "int4")


def test_bits_view_is_a_plain_function():
    """The computation behind notebook 04's "bits" slider."""
    from kit.scratch.quant import bits_view

    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    views = [bits_view(w, b, blocksize=64, linear_params=1000, other_params=100) for b in range(2, 9)]
    assert all(a["mse"] > b["mse"] for a, b in zip(views, views[1:]))
    assert views[2]["bits_per_param"] == pytest.approx(4.5)
    assert views[2]["memory_mb"]["int4"] == pytest.approx((1000 * 4.5 / 8 + 100 * 2) / 1e6)
    assert views[0]["error_range"] == views[-1]["error_range"]      # the x axis stays put
    with pytest.raises(ValueError, match="bits"):
        bits_view(w, 9)
