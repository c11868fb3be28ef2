"""LoftQ: adapters that start from what 4-bit loading lost (one iteration of kit.scratch.lora.loftq_factors).
"""
from __future__ import annotations

import torch
from torch import nn

from kit.engine.adapters.files import _require_peft
from kit.engine.adapters.merge import dequantize
from kit.engine.train import is_4bit


def init_loftq(peft_model, full_precision) -> dict:
    """Start a QLoRA model's adapters from what quantization lost (LoftQ, one iteration):
    for every LoRA layer on a 4-bit base, B A * scaling = the best rank-r approximation of
    W - dequantize(W_4bit), W the `full_precision` model's weight of the same name
    (kit.scratch.lora.loftq_factors). At step 0 the model is then closer to the full-precision one than
    the plain 4-bit base. (peft's LoftQ computes on a CUDA device; this runs anywhere.)
    -> {"layers", "residual_before", "residual_after"}: summed squared Frobenius norms."""
    from kit.scratch.lora import loftq_factors

    _require_peft(peft_model, "init_loftq")
    weights = {n: m.weight for n, m in full_precision.named_modules() if isinstance(m, nn.Linear)}
    before = after = 0.0
    layers = 0
    for name, module in peft_model.named_modules():
        if not (hasattr(module, "lora_A") and hasattr(module, "base_layer")) or not is_4bit(module):
            continue
        key = name.split("base_model.model.", 1)[-1]
        adapter = module.active_adapters[0]
        residual = weights[key].detach().float() - dequantize(module.get_base_layer())   # (out, in)
        A, B = loftq_factors(residual, module.r[adapter], module.scaling[adapter])
        with torch.no_grad():
            module.lora_A[adapter].weight.copy_(A)
            module.lora_B[adapter].weight.copy_(B)
        before += residual.square().sum().item()
        after += (residual - B @ A * module.scaling[adapter]).square().sum().item()
        layers += 1
    if not layers:
        raise ValueError("init_loftq found no LoRA layer on a 4-bit base: give it a QLoRA model "
                         "(prepare_model(load_model(name, quantization='nf4'), 'qlora')).")
    return {"layers": layers, "residual_before": before, "residual_after": after}
