"""Which parameters train: `prepare_model` is where the three methods differ (kit.arch.METHODS).
"""
from __future__ import annotations

import torch
from torch import nn

from kit.arch import check_method, quantization, target_modules
from kit.engine.train.config import TrainConfig, with_overrides
from kit.machine import bnb_check
from kit.machine.device import bnb_error, profile as read_profile
from kit.scratch.lora import check_hparams


# ---------------------------------------------------------------------------- prepare
def is_4bit(model: nn.Module) -> bool:
    """True if the model holds bitsandbytes 4-bit layers (a QLoRA base)."""
    kinds = _bnb_kinds()
    return bool(kinds) and any(isinstance(m, kinds[0]) for m in model.modules())


def _bnb_kinds() -> tuple:
    """bitsandbytes' 4-bit and 8-bit Linear classes, () where it is not installed."""
    try:
        import bitsandbytes as bnb  # optional: a CPU-only install may lack it
    except ImportError:
        return ()
    return bnb.nn.Linear4bit, bnb.nn.Linear8bitLt


def linear_names(model: nn.Module) -> list[str]:
    """The short names of the Linear layers LoRA can target ("q_proj", ...), lm_head excluded."""
    return sorted({n.rpartition(".")[2] for n in target_modules(model, "all-linear", (nn.Linear, *_bnb_kinds()))})


def prepare_model(model: nn.Module, method: str, config: TrainConfig | None = None,
                  **overrides) -> nn.Module:
    """Decide which parameters train. Returns the model to train (a peft model for LoRA).

    full : every parameter trainable, in fp32 (master weights; autocast does the rest).
    lora : base frozen, peft LoRA adapters on `lora_target_modules`, adapters fp32.
    qlora: the model must be 4-bit already; peft's prepare_model_for_kbit_training
           (norms and embeddings to fp32), then the same LoRA.
    Settings come from `config` (a TrainConfig) with keyword overrides: prepare_model(m, "lora", lora_r=4).
    """
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training  # slow: 4 s

    config = with_overrides(config, overrides)
    check_method(method)
    if isinstance(model, PeftModel):
        raise ValueError("This model already has adapters (a peft model). Pass it to finetune() "
                         "to keep training them, or start from a fresh base model.")
    quantized = is_4bit(model)
    if quantization(method) and not quantized:
        raise ValueError("method='qlora' needs a 4-bit base model; this one has no bitsandbytes "
                         "Linear4bit layers. Load it with load_model(name, quantization='nf4'), "
                         "or use method='lora' on this model.")
    if not quantization(method) and quantized:
        raise ValueError(f"method={method!r} on a 4-bit base: LoRA on a 4-bit base is QLoRA, use "
                         "method='qlora'; for full fine-tuning load the model with quantization=None.")
    if quantization(method):
        problem = bnb_error(read_profile(), 4)
        if problem:
            raise ValueError(f"method='qlora' cannot run here: {problem}")
    # Non-re-entrant checkpointing computes the gradients of the adapters even when the
    # layer's input does not require grad (frozen embeddings under LoRA).
    ckpt_kwargs = {"use_reentrant": False}

    if method == "full":
        if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
            model.float()  # fp32 master weights; autocast computes in 16 bit on a GPU
        model.requires_grad_(True)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        return model

    check_hparams(config.lora_r, config.lora_alpha, config.lora_dropout)
    target_modules(model, config.lora_target_modules, (nn.Linear, *_bnb_kinds()))  # names checked
    if quantization(method):
        bnb_check.protect(model)  # on a CPU: bitsandbytes' gradient-cutting repacking off (kit.machine.bnb_check)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing,
                                                gradient_checkpointing_kwargs=ckpt_kwargs)
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_target_modules, use_rslora=config.use_rslora,
                      use_dora=config.use_dora, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()  # adapters train in fp32, whatever the base's dtype
    return model
