"""The adapters and their gradients: nothing trainable, a target without an adapter, fp16 parameters
under a scaler, no gradient, lora_B cut off, the gradient norm per group of layers.
"""
from __future__ import annotations

import math
import re

import torch

from kit.commands.diagnose.findings import Finding


# ---------------------------------------------------------------------------- adapters
def check_adapters(model, targets) -> list[Finding]:
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        return [Finding("adapters", "nothing-trainable", "no parameter has requires_grad: the optimizer "
                        "has nothing to change.", "call kit.engine.train.prepare_model(model, method) (or "
                        "peft's get_peft_model) before training.")]
    if targets in (None, "all-linear") or not hasattr(model, "peft_config"):
        return []
    wanted = [targets] if isinstance(targets, str) else list(targets)
    adapted = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    missing = [t for t in wanted if t not in adapted]
    return [Finding("adapters", "target-without-adapter", f"no adapter on {missing}: those layers stay frozen.",
                    f"name modules the model has (it has {sorted(adapted)} adapted); kit.arch.target_modules "
                    "lists a model's linear layers.")] if missing else []


def check_trainable_dtypes(model, grad_scaling: bool) -> list[Finding]:
    """fp16 trainable parameters under a gradient scaler: GradScaler refuses to unscale fp16
    gradients ("Attempting to unscale FP16 gradients", transformers#23165)."""
    half = [n for n, p in model.named_parameters() if p.requires_grad and p.dtype == torch.float16]
    if not (half and grad_scaling):
        return []
    return [Finding("adapters", "fp16-trainable-with-scaler", f"{len(half)} trainable parameters are fp16 (first: "
                    f"{half[0]}) and this device trains with a gradient scaler: the first step fails with "
                    "'Attempting to unscale FP16 gradients'.", "keep the trainable parameters (the adapters) in "
                    "fp32 over the 16-bit base, as kit.engine.train.prepare_model does (autocast computes in fp16).")]


def group_of(name: str) -> str:
    """'model.layers.3.self_attn.q_proj.lora_B.default.weight' -> 'layers 0-9: attention'."""
    layer = re.search(r"layers\.(\d+)\.", name)
    kind = "attention" if "attn" in name else "mlp" if "mlp" in name else "other"
    if not layer:
        return kind
    low = int(layer.group(1)) // 10 * 10
    return f"layers {low}-{low + 9}: {kind}"


def check_gradients(model, batch: dict) -> tuple[list[Finding], dict]:
    """One forward and backward pass on `batch`; -> (findings, gradient norm per group of layers)."""
    model.train()
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    if not loss.requires_grad:       # no trainable parameter reaches the loss at all
        return [Finding("adapters", "no-gradient", "the loss does not depend on any trainable parameter: "
                        "backward() would fail ('element 0 of tensors does not require grad'). A known cause "
                        "is gradient checkpointing (reentrant) on a frozen base whose inputs need no gradient.",
                        "call model.enable_input_require_grads(), or use_reentrant=False (the kit's "
                        "prepare_model does both).")], {}
    loss.backward()
    norms, missing, zero_b = {}, [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            missing.append(name)
            continue
        norms[group_of(name)] = math.hypot(norms.get(group_of(name), 0.0), p.grad.norm().item())
        if "lora_B" in name and p.grad.abs().max().item() == 0:
            zero_b.append(name)
    model.zero_grad(set_to_none=True)
    found = []
    if missing:
        found.append(Finding("adapters", "no-gradient", f"{len(missing)} trainable parameters got no gradient "
                             f"(first: {missing[0]}): they will never change. A known cause is gradient "
                             "checkpointing (reentrant) on a frozen base whose inputs need no gradient.",
                             "call model.enable_input_require_grads(), or use_reentrant=False (the kit's "
                             "prepare_model does both)."))
    if zero_b:
        found.append(Finding("adapters", "lora-b-zero-gradient", f"{len(zero_b)} lora_B matrices got a zero "
                             "gradient: their layers' outputs do not reach the loss.",
                             "check that the adapted layers are used in the forward pass."))
    return found, norms


def check_adapter_weights(state: dict) -> list[Finding]:
    """A trained adapter's tensors (safetensors): every lora_B still zero = nothing was learnt."""
    bs = {k: v for k, v in state.items() if "lora_B" in k}
    if bs and all(v.abs().max().item() == 0 for v in bs.values()):
        return [Finding("training", "adapters-unchanged", f"all {len(bs)} lora_B matrices are still zero: the "
                        "adapter adds nothing, the model is the base.", "look at the gradients (python -m kit "
                        "diagnose --config <recipe>) and the learning rate.")]
    return []
