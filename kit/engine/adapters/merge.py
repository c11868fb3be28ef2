"""Merging: W + (alpha / r) B A into the base, for a 16-bit base and a 4-bit one (dequantized
first), checked against the adapter model's logits; the merged model saved.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from kit.engine.adapters.files import _require_peft, save_full
from kit.engine.train import is_4bit
from kit.machine import bnb_check


# ---------------------------------------------------------------------------- compare / merge
@torch.no_grad()
def logits(model, batch: dict) -> torch.Tensor:
    """Logits (B, T, V) in fp32 for a collated batch, in eval mode (no dropout)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = model(input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device)).logits.float().cpu()
    model.train(was_training)
    return out


def max_logit_diff(model_a, model_b, batch: dict) -> float:
    """Largest |logit_a - logit_b| over the batch's real (non-padding) tokens."""
    mask = batch["attention_mask"].bool().cpu()  # (B, T)
    return (logits(model_a, batch) - logits(model_b, batch))[mask].abs().max().item()


@dataclass
class MergeResult:
    model: nn.Module    # a plain transformers model: W + B @ A * scaling, no adapter layers
    info: dict          # {"method", "dtype", "max_logit_diff" (None without a batch), "note"}


def merge(model, batch: dict | None = None) -> MergeResult:
    """Fold the active adapter into the base weights: W' = W + B @ A * scaling.

    LoRA : peft's merge_and_unload (in place: `model` is consumed).
    QLoRA: dequantize the 4-bit base into a fresh fp32 model and add the delta there
           (no re-quantization; `model` is left intact).
    With a `batch`, info["max_logit_diff"] is the largest logit difference between the
    adapter model and the merged one on it.
    """
    _require_peft(model, "merge")
    quantized = is_4bit(model)
    if quantized:   # the reference logits and the merge both need the layout the model trained in
        bnb_check.protect(model)
    reference = logits(model, batch) if batch is not None else None
    if quantized:
        merged, method = _dequantize_and_merge(model), "qlora"
        note = "4-bit base dequantized to fp32, then W + B @ A * scaling; not re-quantized"
    else:
        merged, method = model.merge_and_unload(safe_merge=True), "lora"
        note = "peft merge_and_unload (safe_merge): W + B @ A * scaling"
    merged.eval()
    diff = (logits(merged, batch) - reference)[batch["attention_mask"].bool()].abs().max().item() \
        if batch is not None else None
    dtype = str(next(merged.parameters()).dtype).replace("torch.", "")
    return MergeResult(merged, {"method": method, "dtype": dtype, "max_logit_diff": diff, "note": note})


def dequantize(layer) -> torch.Tensor:
    """The weight (out, in) of a Linear or bitsandbytes Linear4bit, in fp32."""
    import bitsandbytes as bnb  # optional (4-bit merges only)
    if isinstance(layer, bnb.nn.Linear4bit):
        return bnb_check.dequantize(layer)  # bitsandbytes' decode, or kit.scratch.quant's where it is wrong here
    if isinstance(layer, nn.Linear):
        return layer.weight.detach().float()
    raise ValueError(f"Cannot merge into a {type(layer).__name__} layer: merge supports 16/32-bit "
                     "and 4-bit (nf4/fp4) bases, not 8-bit ones.")


def _dequantize_and_merge(peft_model) -> nn.Module:
    """A fresh fp32 copy of the base with every 4-bit weight dequantized and the adapter added."""
    import bitsandbytes as bnb  # optional (4-bit merges only)

    base = peft_model.get_base_model()
    state = {}
    for name, module in base.named_modules():
        if ".base_layer" in name or "lora_" in name:
            continue
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):  # a LoRA layer
            layer = module.get_base_layer()
            W = dequantize(layer)                              # (out, in)
            for adapter in module.active_adapters:
                W += module.get_delta_weight(adapter).float()  # B @ A * scaling, (out, in)
        elif isinstance(module, bnb.nn.Linear4bit):             # a 4-bit layer LoRA did not target
            layer, W = module, dequantize(module)
        else:
            continue
        state[f"{name}.weight"] = W.cpu()
        if layer.bias is not None:
            state[f"{name}.bias"] = layer.bias.detach().float().cpu()
    for name, tensor in list(base.named_parameters()) + list(base.named_buffers()):
        key = name.replace(".base_layer", "")
        if "lora_" not in name and key not in state and tensor.is_floating_point():
            state[key] = tensor.detach().float().cpu()         # embeddings, norms

    config = copy.deepcopy(base.config)
    config.quantization_config = None
    del config.quantization_config
    fresh = type(base)(config).float()
    expected = set(fresh.state_dict())
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = expected - set(state) - tied
    if missing:
        raise RuntimeError(f"merge could not rebuild weights {sorted(missing)[:5]} of the base model.")
    fresh.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    fresh.tie_weights()
    return fresh.to(next(peft_model.parameters()).device)


# ---------------------------------------------------------------------------- ship it
def save_merged(model, path, tokenizer=None, dtype: torch.dtype = torch.bfloat16, batch: dict | None = None) -> dict:
    """Merge the active adapter into the base weights and save a plain transformers model in
    `dtype` (16-bit by default: what llama.cpp's converter, vLLM and the hub expect), which
    `AutoModelForCausalLM.from_pretrained(path)` loads with no peft at all. `model` stays as it
    was (LoRA merges a copy; a 4-bit QLoRA base is dequantized into a fresh model, see `merge`).
    -> save_full's {"path", "files", "bytes", "mb"} + "merge" (merge's info: with a `batch`, the
    largest logit difference between the adapter model and the merged one, in fp32)."""
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.bfloat16, torch.float16 or torch.float32; got {dtype!r}.")
    _require_peft(model, "save_merged")
    merged = merge(model if is_4bit(model) else copy.deepcopy(model), batch)
    info = save_full(merged.model.to(dtype), path, tokenizer)
    return info | {"merge": merged.info, "dtype": str(dtype).replace("torch.", "")}
