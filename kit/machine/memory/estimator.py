"""The estimator: the memory of a step computed from the architecture alone (`estimate`), for
models too large to load; and the comparison with a measured ledger (`compare`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from kit.arch import (METHODS, OPTIMIZERS, Arch, check_method, linear_shapes, param_groups, quantization,
                      resolve_arch)
from kit.machine.memory.activations import _lora_params, _targets, activation_rows
from kit.machine.memory.ledger import Ledger, _rows
from kit.scratch.lora import check_hparams

PRECISIONS = ("amp", "16", "32")   # full fine-tuning: fp32 master weights + 16-bit compute, all 16, all 32


@dataclass
class Estimate:
    """Bytes predicted from the architecture; the same components as `Ledger` + workspace."""
    weights: int                 # base weights + adapters
    quant_constants: int         # 4-bit: absmax etc.; 8-bit: per-row scales
    gradients: int
    optimizer: int
    activations: int             # saved for backward during the forward pass
    logits: int
    workspace: int               # transient at the backward peak (see module docstring)
    params: int                  # parameters of the base model
    trainable: int               # trainable parameters
    settings: dict = field(default_factory=dict)   # the arguments that produced it
    activation_rows: list = field(default_factory=list)  # (what, bytes): the activation formula

    @property
    def total(self) -> int:
        return (self.weights + self.quant_constants + self.gradients + self.optimizer
                + self.activations + self.logits + self.workspace)

    def as_dict(self) -> dict:
        d = {**asdict(self), "total": self.total}
        d.pop("activation_rows")
        return d

    def rows(self) -> list[tuple[str, int, float]]:
        keys = ("weights", "quant_constants", "gradients", "optimizer", "activations", "logits",
                "workspace")
        return _rows({k: getattr(self, k) for k in keys} | {"total": self.total})


def _check(name, value, allowed, fix=""):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}; got {value!r}. {fix}".strip())


def estimate(arch, method: str = "lora", bits: int | None = None, r: int = 8,
             targets="all-linear", batch_size: int = 1, seq_len: int = 512,
             gradient_checkpointing: bool = True, optimizer: str = "adamw_torch",
             precision: str = "amp", act_bytes: int = 2, compute_dtype: torch.dtype | None = None,
             lora_dropout: float = 0.0, padded: bool = False) -> Estimate:
    """Predict the memory of one training step of a Llama-style model.

    arch:       a name from ARCHS, an `Arch`, or a transformers config (LlamaConfig, ...)
    method:     "full" | "lora" | "qlora"
    bits:       the frozen base: lora 16 (default) or 32; qlora 4 (default, NF4 + double
                quantization) or 8 (int8). Full fine-tuning takes its dtype from `precision`.
    precision:  full only: "amp" (fp32 master weights, 16-bit compute), "16", "32"
    act_bytes:  bytes of an activation: 2 for a GPU's bf16/fp16 (default), 4 on a CPU (fp32);
                `compute_dtype` (a torch dtype) sets it instead.
    optimizer:  a name from kit.arch.OPTIMIZERS: "adamw_torch" (m and v in the parameters'
                dtype), "adamw_8bit"/"paged_adamw_8bit" (bitsandbytes blockwise 8-bit), "sgd" (no state)
    padded:     True if batches carry a padding mask (k/v heads are then repeated for SDPA)
    """
    a = resolve_arch(arch)
    act_bytes = _checked(method, bits, r, precision, optimizer, act_bytes, compute_dtype, lora_dropout,
                         batch_size, seq_len)
    bits = bits or METHODS[method].gpu_estimate.get("bits")       # lora 16, qlora 4; full: its precision
    P, weights, quant_constants, gradients, opt, trainable = _states(a, method, bits, r, targets, precision,
                                                                     optimizer)
    rows, one_layer = activation_rows(a, method, batch_size, seq_len, act_bytes,
                                      gradient_checkpointing, targets, r, lora_dropout,
                                      precision, padded)
    N = batch_size * seq_len
    workspace = N * a.vocab_size * 4 + (one_layer if gradient_checkpointing else 0)
    settings = dict(arch=a.name, method=method, bits=bits, r=r, targets=targets,
                    batch_size=batch_size, seq_len=seq_len,
                    gradient_checkpointing=gradient_checkpointing, optimizer=optimizer,
                    precision=precision, act_bytes=act_bytes, lora_dropout=lora_dropout,
                    padded=padded)
    return Estimate(weights, quant_constants, gradients, opt, sum(b for _, b in rows),
                    N * a.vocab_size * act_bytes, workspace, P, trainable, settings, rows)


def _checked(method, bits, r, precision, optimizer, act_bytes, compute_dtype, lora_dropout,
             batch_size, seq_len) -> int:
    """Every setting of `estimate` checked (the error names it and what it takes); -> act_bytes."""
    check_method(method)
    _check("precision", precision, PRECISIONS)
    _check("optimizer", optimizer, OPTIMIZERS)
    if method != "full":
        _check("bits", bits, (None, *METHODS[method].bits),
               f"For method={method!r}; a quantized base is method='qlora'.")
    check_hparams(r, 1.0, lora_dropout)             # LoRA's rules (alpha changes no memory)
    if compute_dtype is not None:
        act_bytes = torch.empty(0, dtype=compute_dtype).element_size()
    _check("act_bytes", act_bytes, (2, 4), "2 for bf16/fp16 on a GPU, 4 for fp32 on a CPU.")
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer; got {v!r}.")
    return act_bytes


def _states(a: Arch, method: str, bits, r: int, targets, precision: str, optimizer: str) -> tuple:
    """(parameters, weights, quantization constants, gradients, optimizer state, trainable
    parameters): the bytes that do not depend on the batch."""
    groups, L, shapes = param_groups(a), a.num_hidden_layers, linear_shapes(a)
    P = groups["linear"] + groups["other"]
    tensors_per_layer = sum(c for _, _, c in shapes.values()) + 2 + (a.num_experts > 1) + 4 * a.attention_bias
    quant_constants = 0
    if method == "full":
        pb = 2 if precision == "16" else 4                  # master weights, grads, Adam states
        trainable, n_tensors = P, L * tensors_per_layer + 1 + (1 if a.tie_word_embeddings else 2)
        weights = P * pb
    else:
        tg = _targets(targets)
        trainable = _lora_params(a, tg, r)
        n_tensors = 2 * L * sum(shapes[t][2] for t in tg)
        pb = 4                                              # adapters: fp32
        if not quantization(method):
            weights = P * bits // 8 + trainable * 4
        else:
            weights = groups["linear"] * bits // 8 + groups["other"] * 4 + trainable * 4
            quant_constants = L * sum(_constants(i, o, bits) * c for i, o, c in shapes.values())
    gradients = trainable * pb
    state_bytes = OPTIMIZERS[optimizer].state_bytes
    state_bytes = 2 * pb if state_bytes is None else state_bytes   # None: 2 moments in the params' dtype
    opt = int(trainable * state_bytes) + (4 * n_tensors if optimizer == "adamw_torch" else 0)  # + step counters
    return P, weights, quant_constants, gradients, opt, trainable


def _constants(in_features: int, out_features: int, bits: int) -> int:
    """Bytes of bitsandbytes quantization constants for one Linear weight.
    4-bit (blocksize 64, double quantization): one uint8 absmax per 64 weights, one fp32 absmax
    per 256 of those, the NF4 code (16 fp32), the nested 8-bit code (256 fp32), an fp32 offset:
    4 + 8/64 + 32/16384 = 4.127 bits per weight. 8-bit: one fp32 scale per output row (SCB)."""
    n = in_features * out_features
    if bits == 8:
        return 4 * out_features
    blocks = math.ceil(n / 64)
    return blocks + 4 * math.ceil(blocks / 256) + 4 * (16 + 256 + 1)


# ---------------------------------------------------------------------------- comparing
def compare(ledger: Ledger, est: Estimate) -> list[dict]:
    """Measured vs estimated, component by component (ratio = estimate / measured)."""
    out = []
    for k in ("weights", "quant_constants", "gradients", "optimizer", "activations", "logits"):
        m, e = getattr(ledger, k), getattr(est, k)
        out.append({"component": k, "measured": m, "estimated": e,
                    "ratio": e / m if m else (1.0 if e == 0 else float("inf"))})
    return out


# ---------------------------------------------------------------------------- does it fit?
def estimate_settings(method: str, bits: int | None = None) -> dict:
    """The `estimate` settings of `method` at base width `bits` (kit.arch.METHODS[method].bits;
    None = the usual one): full 32 = fp32 master weights with 16-bit compute (AMP), full 16 =
    pure 16-bit; LoRA 16 or 32 = the frozen base's dtype; QLoRA 4 or 8 = the quantized base."""
    check_method(method)
    allowed = METHODS[method].bits
    bits = allowed[0] if bits is None else bits
    if bits not in allowed:
        raise ValueError(f"bits={bits} does not go with method={method!r}: use one of {allowed} "
                         "(full: 32 = AMP, 16 = pure 16-bit; lora: the base's dtype; qlora: the 4- or "
                         "8-bit base).")
    if method == "full":
        return {"method": "full", "precision": "amp" if bits == 32 else "16"}
    return {"method": method, "bits": bits}
