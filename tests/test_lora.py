"""Tests for kit/scratch/lora.py: behaviour, parameter counts, and parity with peft."""

import copy
import math

import pytest
import torch
import torch.nn as nn
from conftest import micro_llama as tiny_llama

from kit.scratch.lora import (LoRALinear, inject, lora_parameter_count, merge_all,  # noqa: E402
                              trainable_parameters, unmerge_all)


class Block(nn.Module):
    """A small model with attention-style Linear names, for peft parity."""

    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(16, 12)
        self.v_proj = nn.Linear(12, 16, bias=False)
        self.mlp = nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 16))

    def forward(self, x):
        return self.mlp(self.v_proj(torch.tanh(self.q_proj(x))))


def randomize_lora(layer: LoRALinear, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g))
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g))  # non-zero B


# ---------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------

def test_fresh_wrapper_equals_base():
    torch.manual_seed(0)
    base = nn.Linear(20, 10)
    ref = copy.deepcopy(base)
    layer = LoRALinear(base, r=4, alpha=8)
    x = torch.randn(3, 5, 20)
    assert layer.lora_A.shape == (4, 20) and layer.lora_B.shape == (10, 4)
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0
    assert torch.equal(layer(x), ref(x))  # B = 0: exactly the base layer
    assert not any(p.requires_grad for p in layer.base_layer.parameters())
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad


def test_forward_formula_and_scaling():
    torch.manual_seed(1)
    layer = LoRALinear(nn.Linear(8, 6), r=4, alpha=8)
    randomize_lora(layer, 1)
    assert layer.scaling == 2.0
    assert LoRALinear(nn.Linear(8, 6), r=4, alpha=8, use_rslora=True).scaling == 4.0  # 8/sqrt(4)
    x = torch.randn(5, 8)
    expected = layer.base_layer(x) + x @ layer.lora_A.T @ layer.lora_B.T * 2.0
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.delta_weight(), layer.lora_B @ layer.lora_A * 2.0)


def test_merge_unmerge_roundtrip_and_double_merge_error():
    torch.manual_seed(2)
    layer = LoRALinear(nn.Linear(16, 12), r=3, alpha=6)
    randomize_lora(layer, 2)
    w0 = layer.base_layer.weight.detach().clone()
    x = torch.randn(4, 16)
    y_unmerged = layer(x)
    assert (y_unmerged - layer.base_layer(x)).abs().max() > 1e-2  # the adapter matters

    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), y_unmerged, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.base_layer.weight, w0 + layer.delta_weight())
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()

    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base_layer.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), y_unmerged, atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()


def test_gradients_reach_only_the_adapter():
    torch.manual_seed(3)
    layer = LoRALinear(nn.Linear(8, 8), r=2, alpha=4)
    layer(torch.randn(4, 8)).pow(2).sum().backward()
    assert layer.base_layer.weight.grad is None
    assert layer.lora_B.grad is not None and layer.lora_B.grad.abs().sum() > 0
    # with B = 0 the gradient of A is exactly zero at the first step
    assert torch.count_nonzero(layer.lora_A.grad) == 0


def test_adapter_stays_float32_on_bf16_base():
    base = nn.Linear(8, 4).to(torch.bfloat16)
    layer = LoRALinear(base, r=2, alpha=4)
    randomize_lora(layer, 4)
    assert layer.lora_A.dtype == torch.float32 and layer.lora_B.dtype == torch.float32
    y = layer(torch.randn(3, 8, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


# ---------------------------------------------------------------------------
# inject and counting
# ---------------------------------------------------------------------------

def test_inject_all_linear_counts_and_freezes():
    model = tiny_llama()
    shapes = {n: (m.in_features, m.out_features) for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and not n.endswith("lm_head")}
    names = inject(model, r=4, alpha=8)
    assert sorted(names) == sorted(shapes)  # 7 per layer x 2 layers, lm_head excluded
    assert len(names) == 14
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, LoRALinear)

    closed_form = sum(4 * (fan_in + fan_out) for fan_in, fan_out in shapes.values())
    assert trainable_parameters(model) == closed_form
    assert lora_parameter_count(model) == closed_form
    assert lora_parameter_count(list(shapes.values()), r=4) == closed_form
    assert lora_parameter_count(model, r=8) == 2 * closed_form
    assert not model.model.embed_tokens.weight.requires_grad
    assert not model.lm_head.weight.requires_grad


def test_inject_q_v_only_and_output_unchanged():
    model = tiny_llama()
    ref = copy.deepcopy(model)
    names = inject(model, r=2, alpha=4, targets=["q_proj", "v_proj"])
    assert names == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj",
    ]
    wrapped = {n for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert wrapped == set(names)
    attn = model.model.layers[0].self_attn
    assert type(attn.k_proj) is nn.Linear and type(attn.o_proj) is nn.Linear
    ids = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, atol=0, rtol=0)

    # with non-zero B, merging everything keeps the outputs
    for i, n in enumerate(names):
        randomize_lora(model.get_submodule(n), 10 + i)
    with torch.no_grad():
        before = model(ids).logits
        assert merge_all(model) == 4
        torch.testing.assert_close(model(ids).logits, before, atol=1e-4, rtol=1e-4)
        assert unmerge_all(model) == 4
        torch.testing.assert_close(model(ids).logits, before, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------
# parity with peft
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("use_rslora", [False, True])
def test_peft_parity(use_rslora):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(5)
    ours = Block()
    theirs = copy.deepcopy(ours)
    r, alpha = 4, 12
    targets = ["q_proj", "v_proj"]
    inject(ours, r=r, alpha=alpha, targets=targets, use_rslora=use_rslora)
    peft_model = get_peft_model(
        theirs, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0,
                           use_rslora=use_rslora)
    )
    for i, name in enumerate(targets):
        mine = ours.get_submodule(name)
        peft_layer = peft_model.base_model.model.get_submodule(name)
        assert mine.scaling == pytest.approx(peft_layer.scaling["default"])
        randomize_lora(mine, 100 + i)
        with torch.no_grad():
            peft_layer.lora_A["default"].weight.copy_(mine.lora_A)  # (r, in)
            peft_layer.lora_B["default"].weight.copy_(mine.lora_B)  # (out, r)

    assert trainable_parameters(ours) == trainable_parameters(peft_model)
    x = torch.randn(6, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), peft_model(x), atol=1e-6, rtol=0)
        merge_all(ours)
        merged_peft = peft_model.merge_and_unload()
        for name in targets:
            torch.testing.assert_close(
                ours.get_submodule(name).base_layer.weight,
                merged_peft.get_submodule(name).weight, atol=1e-6, rtol=0,
            )
        torch.testing.assert_close(ours(x), merged_peft(x), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("r", [0, -2, 2.5, True])
def test_bad_r(r):
    with pytest.raises(ValueError, match=r"r must be an integer >= 1.*r=8"):
        LoRALinear(nn.Linear(4, 4), r=r, alpha=8)


@pytest.mark.parametrize("alpha", [0, -1.0, "16"])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match=r"alpha.*must be a number > 0"):
        LoRALinear(nn.Linear(4, 4), r=4, alpha=alpha)


def test_bad_dropout_and_base():
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\)"):
        LoRALinear(nn.Linear(4, 4), r=4, alpha=8, dropout=1.0)
    with pytest.raises(TypeError, match="base must be an nn.Linear"):
        LoRALinear(nn.Conv1d(4, 4, 1), r=4, alpha=8)


def test_inject_bad_targets_leave_model_untouched():
    model = Block()
    with pytest.raises(ValueError, match=r"'mlp'.*Sequential.*not nn.Linear"):
        inject(model, r=2, alpha=4, targets=["q_proj", "mlp"])
    with pytest.raises(ValueError, match=r"'k_proj' matches no module.*available.*'q_proj'"):
        inject(model, r=2, alpha=4, targets=["k_proj"])
    with pytest.raises(ValueError, match=r"targets must be 'all-linear' or a non-empty list"):
        inject(model, r=2, alpha=4, targets="q_proj")
    with pytest.raises(ValueError, match="r must be an integer"):
        inject(model, r=0, alpha=4)
    # nothing was wrapped or frozen by the failed calls
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())

    with pytest.raises(ValueError, match="found no nn.Linear to adapt"):
        inject(nn.Sequential(nn.ReLU()), r=2, alpha=4)

    inject(model, r=2, alpha=4, targets=["q_proj"])
    with pytest.raises(ValueError, match="already is a LoRALinear"):
        inject(model, r=2, alpha=4, targets=["q_proj"])


def test_count_from_shapes_needs_r():
    assert lora_parameter_count([(4096, 4096)], r=8) == 8 * 8192
    with pytest.raises(ValueError, match="r is required"):
        lora_parameter_count([(4096, 4096)])
    assert math.isclose(lora_parameter_count([(4096, 4096)], r=8) / 4096**2, 1 / 256)


# ---------------------------------------------------------------------------- LoftQ
def test_loftq_factors_are_the_best_rank_r_approximation():
    from kit.scratch.lora import loftq_factors
    g = torch.Generator().manual_seed(0)
    residual = torch.randn(64, 48, generator=g) @ torch.diag(torch.linspace(2, 0.1, 48))
    r, scaling = 4, 2.0
    A, B = loftq_factors(residual, r, scaling)
    assert A.shape == (r, 48) and B.shape == (64, r)
    S = torch.linalg.svdvals(residual)
    best = (residual - B @ A * scaling).norm()
    assert best.item() == pytest.approx(S[r:].square().sum().sqrt().item(), rel=1e-4)   # Eckart-Young
    for trial in range(20):       # no other rank-r update gets closer: perturbed factors, random ones
        noise = 0.05 * torch.randn(2, 1, generator=g)
        nearby = (B + noise[0] * torch.randn(B.shape, generator=g)) @ (A + noise[1] * torch.randn(A.shape, generator=g))
        other = torch.randn(64, r, generator=g) @ torch.randn(r, 48, generator=g) * 0.1
        assert (residual - nearby * scaling).norm() > best and (residual - other).norm() > best
    with pytest.raises(ValueError, match=r"r must be a whole number in 1\.\.48"):
        loftq_factors(residual, 49, scaling)


def test_loftq_starts_a_qlora_model_closer_to_the_full_precision_one():
    from kit.engine.adapters import init_loftq, logits
    from kit.engine.train import prepare_model
    from kit.machine.models import load_model
    full, tok = load_model("tiny-llama")
    batch = tok(["Double 3", "What is the capital of France?"], return_tensors="pt", padding=True)
    target = logits(full, batch)
    torch.manual_seed(0)
    plain = prepare_model(load_model("tiny-llama", quantization="nf4")[0], "qlora", lora_r=8, lora_alpha=16)
    torch.manual_seed(0)
    loftq = prepare_model(load_model("tiny-llama", quantization="nf4")[0], "qlora", lora_r=8, lora_alpha=16)
    info = init_loftq(loftq, full)
    assert info["layers"] == 14 and info["residual_after"] < info["residual_before"]
    far, near = ((logits(m, batch) - target).abs().mean().item() for m in (plain, loftq))
    assert near < 0.9 * far, (near, far)
