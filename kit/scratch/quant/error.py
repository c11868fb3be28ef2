"""What quantization costs: the error of a tensor (MSE, largest error, SQNR), every Linear of a
model quantized in place (`fake_quantize_model`), and a weight's bits (`bits_view`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from kit.arch import target_modules
from kit.scratch.quant.tensor import QuantizedTensor, _check_kind_bits, quantize


def mse(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Mean squared error mean((w - w_hat)**2)."""
    return (w.float() - w_hat.float()).pow(2).mean().item()


def max_abs_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Largest single-element error max|w - w_hat|."""
    return (w.float() - w_hat.float()).abs().max().item()


def sqnr_db(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10*log10(sum w^2 / sum (w - w_hat)^2), in dB.

    Higher is better; each extra bit of a uniform quantizer adds about 6 dB.
    """
    noise = (w.float() - w_hat.float()).pow(2).sum().item()
    signal = w.float().pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def error_report(w: torch.Tensor, qt: QuantizedTensor) -> dict:
    """mse, max_abs_error, sqnr_db, bits_per_param and nbytes for one tensor."""
    w_hat = qt.dequantize()
    return {
        "kind": qt.kind,
        "bits": qt.bits,
        "mse": mse(w, w_hat),
        "max_abs_error": max_abs_error(w, w_hat),
        "sqnr_db": sqnr_db(w, w_hat),
        "bits_per_param": qt.bits_per_param,
        "nbytes": qt.nbytes,
    }


@torch.no_grad()
def fake_quantize_model(
    model: nn.Module,
    kind: str,
    bits: Optional[int] = None,
    blocksize: Union[int, str, None] = 64,
    targets: Union[str, Sequence[str]] = "all-linear",
    double_quant: bool = False,
) -> dict:
    """Replace each targeted Linear weight by quantize(w).dequantize(), in place.

    This simulates the accuracy of a quantized model ("fake quantization"),
    for any bit width, not only the ones bitsandbytes has kernels for.
    lm_head is skipped by default. Returns a summary: layers touched,
    parameter count, total bytes, bits/param, and the mean squared error.
    """
    bits = _check_kind_bits(kind, bits)
    modules = dict(model.named_modules())
    layers = [(name, modules[name]) for name in target_modules(model, targets)]
    n_params, n_bytes, sq_err = 0, 0, 0.0
    for _, layer in layers:
        w = layer.weight
        qt = quantize(w, kind, bits=bits, blocksize=blocksize, double_quant=double_quant)
        w_hat = qt.dequantize()
        sq_err += (w.float() - w_hat.float()).pow(2).sum().item()
        n_params += w.numel()
        n_bytes += qt.nbytes
        w.copy_(w_hat)
    return {
        "kind": kind,
        "bits": bits,
        "layers": [n for n, _ in layers],
        "params": n_params,
        "nbytes": n_bytes,
        "bits_per_param": 8 * n_bytes / max(n_params, 1),
        "mse": sq_err / max(n_params, 1),
    }


def bits_view(w, bits: int, blocksize: int = 64, linear_params: int | None = None,
              other_params: int = 0, layer: str = "") -> dict:
    """Quantize one weight `w` to `bits` bits (symmetric absmax, blockwise: kind "int")
    and report the error and what the whole model's weights would take.

    linear_params: parameters of the model's Linear layers (what gets quantized; default w's size)
    other_params:  the rest (embeddings, norms), kept in 16 bit
    -> {"bits", "blocksize", "layer", "mse", "sqnr_db", "bits_per_param", "error" (a sample of
        w_hat - w), "error_range" (the 2-bit maximum, so the x axis stays put), "params",
        "memory_mb" {"fp32", "bf16", "int<bits>"}}"""
    qt = quantize(w, "int", bits=bits, blocksize=blocksize)
    report = error_report(w, qt)
    err = (qt.dequantize().float() - w.float()).flatten()          # (n,)
    if err.numel() > 200_000:                                      # a fixed sample is enough to draw
        err = err[torch.randperm(err.numel(), generator=torch.Generator().manual_seed(0))[:200_000]]
    widest = quantize(w, "int", bits=2, blocksize=blocksize)
    linear = w.numel() if linear_params is None else linear_params
    params = linear + other_params
    return {"bits": bits, "blocksize": blocksize, "layer": layer, "mse": report["mse"],
            "sqnr_db": report["sqnr_db"], "bits_per_param": report["bits_per_param"],
            "error": err.tolist(), "error_range": float((widest.dequantize().float() - w.float()).abs().max()),
            "params": params,
            "memory_mb": {"fp32": params * 4 / 1e6, "bf16": params * 2 / 1e6,
                          f"int{bits}": (linear * report["bits_per_param"] / 8 + other_params * 2) / 1e6}}
