"""Save, load, switch and merge adapters; save full fine-tuning checkpoints.

A LoRA adapter is a few MB of A and B matrices; the base model stays where it is.

    info = save_adapter(model, "runs/dates-lora")        # safetensors, sizes reported
    model = load_adapter(base, "runs/dates-lora")        # base + adapter (a peft model)
    model = load_adapter(model, "runs/extract-lora", adapter_name="extract")
    set_adapter(model, "extract")                        # switch which adapter runs
    with disable_adapter(model):                         # the base model, exactly
        ...
    merged = merge(model, batch).model                   # W + B @ A * scaling: a plain model

Merging a QLoRA adapter: the base is 4-bit, so "merge" means dequantize the base to
fp32 (a fresh model with ordinary Linear layers) and add B @ A * scaling there. We do
NOT re-quantize: rounding the merged weights back to 4 bit would change them (peft's
4-bit merge warns about that), and the adapter learned to correct the 4-bit base.

Everything is written as safetensors (no pickle).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kit.machine import bnb_check
from kit.files import read_json, read_tensors
from kit.engine.train import is_4bit

ADAPTER_FILE = "adapter_model.safetensors"


def _require_peft(model, what: str):
    from peft import PeftModel  # slow to import (about 4 s): only when needed
    if not isinstance(model, PeftModel):
        raise ValueError(f"{what} needs a model with peft adapters (method='lora' or 'qlora'); got "
                         f"{type(model).__name__}. For full fine-tuning use save_full(model, path).")


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def adapter_names(model) -> list[str]:
    """Names of the adapters loaded on a peft model."""
    _require_peft(model, "adapter_names")
    return list(model.peft_config)


# ---------------------------------------------------------------------------- save / load
def save_adapter(model, path, allow_untrained: bool = False) -> dict:
    """Save the active adapter as safetensors and check the file reloads non-empty.

    Returns {"path", "files" {name: bytes}, "bytes", "mb", "tensors", "parameters"};
    "path" is the folder to pass to load_adapter (peft puts an adapter not named
    "default" in a sub-folder of that name). Refuses an adapter with no tensors, and one
    whose lora_B are all zero (untrained: it changes nothing) unless allow_untrained=True.
    """
    from peft import get_peft_model_state_dict  # slow to import (about 4 s): only when needed

    _require_peft(model, "save_adapter")
    name = model.active_adapter
    state = get_peft_model_state_dict(model, adapter_name=name)
    if not state:
        raise ValueError(f"Adapter {name!r} has no tensors to save: was it created with "
                         "prepare_model(..., method='lora') and trained?")
    b_mats = [t for k, t in state.items() if "lora_B" in k]
    if b_mats and all(not t.any() for t in b_mats) and not allow_untrained:
        raise ValueError(f"Every lora_B of adapter {name!r} is zero, so it changes nothing (untrained). "
                         "Train it first (finetune), or pass allow_untrained=True to save it anyway.")

    path = Path(path)
    model.save_pretrained(str(path), safe_serialization=True, selected_adapters=[name])
    folder = path if name == "default" else path / name
    saved = read_tensors(folder / ADAPTER_FILE, "adapter")  # the trap: files that save "fine" but empty
    if len(saved) != len(state) or sum(t.numel() for t in saved.values()) == 0:
        raise RuntimeError(f"{folder / ADAPTER_FILE} reloads with {len(saved)} tensors, expected "
                           f"{len(state)}: the adapter was not saved correctly.")
    size = (folder / ADAPTER_FILE).stat().st_size
    return {"path": str(folder), "adapter": name, "files": _files(folder), "bytes": size,
            "mb": size / 1e6, "tensors": len(saved), "parameters": sum(t.numel() for t in saved.values())}


def load_adapter(base_model, path, adapter_name: str = "default", is_trainable: bool = False):
    """Put the adapter saved in `path` on `base_model`; returns the peft model.

    base_model may be a plain model (a new peft model wraps it) or a peft model that
    already has adapters (this one is added under `adapter_name`; use set_adapter to
    switch). is_trainable=True to keep training it with finetune(). A truncated or corrupt
    adapter file raises kit.files.DamagedFileError naming it, before peft reads it
    (base_model is then left as it was).
    """
    from peft import PeftModel, get_peft_model_state_dict  # slow to import (about 4 s): only when needed

    path = Path(path)
    if not (path / "adapter_config.json").exists() or not (path / ADAPTER_FILE).exists():
        raise ValueError(f"path {str(path)!r} holds no saved adapter (adapter_config.json and "
                         f"{ADAPTER_FILE}); pass the folder save_adapter returned as 'path'.")
    read_json(path / "adapter_config.json", "adapter", {"peft_type": str})
    saved = read_tensors(path / ADAPTER_FILE, "adapter")  # checked here: peft's errors are cryptic
    if isinstance(base_model, PeftModel):
        if adapter_name in base_model.peft_config:
            raise ValueError(f"adapter_name {adapter_name!r} is already loaded "
                             f"({adapter_names(base_model)}); choose another name.")
        base_model.load_adapter(str(path), adapter_name=adapter_name, is_trainable=is_trainable)
        model = base_model
    else:
        model = PeftModel.from_pretrained(base_model, str(path), adapter_name=adapter_name,
                                          is_trainable=is_trainable)
    # Check every saved tensor landed in the model (a key mismatch would load nothing, silently).
    loaded = get_peft_model_state_dict(model, adapter_name=adapter_name)
    if set(saved) != set(loaded) or any(not torch.equal(saved[k], loaded[k].cpu().to(saved[k].dtype))
                                        for k in saved):
        raise RuntimeError(f"The adapter in {str(path)!r} does not match this base model's layers; "
                           "load it on the model it was trained on.")
    model.eval()
    return model


def save_full(model, path, tokenizer=None) -> dict:
    """Save a fully fine-tuned (or merged) model as safetensors; returns file sizes."""
    from peft import PeftModel  # slow to import (about 4 s): only when needed
    if isinstance(model, PeftModel):
        raise ValueError("save_full got a model with adapters: use save_adapter(model, path) for "
                         "the adapter alone (MBs), or merge(model).model then save_full.")
    path = Path(path)
    model.save_pretrained(str(path), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    files = _files(path)
    weights = sum(size for name, size in files.items() if name.endswith(".safetensors"))
    return {"path": str(path), "files": files, "bytes": weights, "mb": weights / 1e6}


# ---------------------------------------------------------------------------- several adapters
def set_adapter(model, name: str) -> None:
    """Make adapter `name` the one that runs (peft's PeftModel.set_adapter)."""
    _require_peft(model, "set_adapter")
    if name not in model.peft_config:
        raise ValueError(f"name must be one of the loaded adapters {adapter_names(model)}; got {name!r}. "
                         "Load it first with load_adapter(model, path, adapter_name=name).")
    model.set_adapter(name)


def disable_adapter(model):
    """Context manager: inside it the model computes as the base model, exactly.

        with disable_adapter(model):
            base_logits = model(**batch).logits
    """
    _require_peft(model, "disable_adapter")
    return model.disable_adapter()


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
