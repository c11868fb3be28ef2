"""Weight quantization from scratch, in plain torch: int8, int-k, FP4, NF4.

Every quantizer here follows the same recipe:

  1. split the weight into groups: the whole tensor, each row, or blocks of
     `blocksize` consecutive values (blockwise, as bitsandbytes and QLoRA do);
  2. per group keep one or two float constants (absmax, or scale + zero point);
  3. map every value, divided by its group's constant, to the nearest entry of
     a small grid of levels and store only that entry's integer code.

Dequantizing is the reverse: level[code] * constant. Smaller groups mean more
constants (more bytes) but less error, because one outlier only spoils its
own block.

Storage cost, with n values in groups of size g, k-bit codes, fp32 constants:

    bits/param = k + 32/g                      e.g. NF4, g=64: 4 + 0.5 = 4.5

Double quantization (QLoRA) quantizes the absmax constants themselves to 8 bits
in blocks of 256 (after subtracting their mean), keeping one fp32 constant per
256 absmax values plus the fp32 mean:

    bits/param = k + 8/g + 32/(g*256) (+ 32/n for the mean)
               = 4 + 0.125 + 0.00195 ~ 4.127   for NF4 with g=64

Codes are stored unpacked (one uint8 per value) for readability; `nbytes`
counts them packed, i.e. a 4-bit code costs half a byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from kit.arch import target_modules

__all__ = [
    "KINDS",
    "nf4_codebook",
    "fp4_codebook",
    "QuantizedTensor",
    "quantize",
    "mse",
    "max_abs_error",
    "sqnr_db",
    "error_report",
    "fake_quantize_model",
    "bits_view",
]

# kind -> (family, default bits)
KINDS = {
    "int8": ("int", 8),                    # symmetric absmax, 8 bits
    "int": ("int", 8),                     # symmetric absmax, `bits` in 2..8
    "int8-zeropoint": ("zeropoint", 8),    # asymmetric: scale + zero point
    "zeropoint": ("zeropoint", 8),         # asymmetric, `bits` in 2..8
    "fp4": ("codebook", 4),                # 4-bit float E2M1
    "nf4": ("codebook", 4),                # 4-bit NormalFloat (QLoRA)
}

DOUBLE_QUANT_BLOCKSIZE = 256  # QLoRA: absmax constants quantized in blocks of 256


# ---------------------------------------------------------------------------
# 4-bit code books
# ---------------------------------------------------------------------------

def nf4_codebook() -> torch.Tensor:
    """The 16 NF4 levels (QLoRA, Dettmers et al. 2023), sorted, in [-1, 1].

    Weights are roughly normal, so NF4 places its levels at quantiles of
    N(0, 1): each level then gets about the same share of the weights. An
    exact zero is wanted (padding, zeros in the weight), so the halves are
    asymmetric: 8 positive levels and 7 negative ones plus 0.

    The outermost quantile cannot be 1.0 (ppf(1) = inf). The paper uses
    offset = 1 - (1/(2*16) + 1/(2*15)) / 2 = 0.9677..., the mean of the
    outermost quantile-bin centres for 16 and 15 bins.

        positive = ppf(linspace(offset, 0.5, 9)[:-1])      8 values
        negative = -ppf(linspace(offset, 0.5, 8)[:-1])     7 values
        levels   = sort(positive + [0] + negative) / max    -> [-1, 1]
    """
    offset = 0.9677083  # = 1 - (1/32 + 1/30) / 2 = 0.96770833..., rounded as in QLoRA's code
    ppf = torch.special.ndtri  # inverse CDF of N(0, 1)
    # linspace in float32, ppf in float64, normalise in float32: this exact
    # order reproduces bitsandbytes' NF4 table bit for bit.
    positive = ppf(torch.linspace(offset, 0.5, 9)[:-1].double())   # (8,)
    negative = -ppf(torch.linspace(offset, 0.5, 8)[:-1].double())  # (7,)
    levels = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative])
    levels = levels.sort().values.float()
    return levels / levels.max()  # (16,) in [-1, 1]


def fp4_codebook() -> torch.Tensor:
    """The 16 FP4 (E2M1) levels, sorted, scaled to [-1, 1].

    4 bits = 1 sign, 2 exponent, 1 mantissa bit, exponent bias 1:
        exponent e > 0: (1 + m/2) * 2**(e - 1)   -> 1, 1.5, 2, 3, 4, 6
        exponent e = 0: (m/2)     (subnormal)    -> 0, 0.5
    so the magnitudes are 0, 0.5, 1, 1.5, 2, 3, 4, 6, divided by 6. +0 and -0
    both exist: only 15 distinct values (NF4 puts its 16th code to better use).
    bitsandbytes' FP4 differs in one magnitude: its smallest non-zero level is
    1/192 instead of 0.5/6 = 1/12.
    """
    values = []
    for sign in (1.0, -1.0):
        for e in range(4):
            for m in range(2):
                magnitude = (m / 2) if e == 0 else (1 + m / 2) * 2 ** (e - 1)
                values.append(sign * magnitude)
    levels = torch.tensor(values).sort().values
    return levels / 6.0  # (16,)


_CODEBOOKS = {"nf4": nf4_codebook, "fp4": fp4_codebook}


# ---------------------------------------------------------------------------
# the quantized tensor
# ---------------------------------------------------------------------------

@dataclass
class QuantizedTensor:
    """Integer codes plus the per-group constants needed to dequantize.

    codes:  (n_groups, group_size) uint8 level indices, last group zero-padded
            (int-k stores q + qmax so that codes are >= 0)
    absmax: (n_groups,) fp32 for symmetric kinds (None if double-quantized)
    scale, zero_point: (n_groups,) for the zero-point kind
    absmax_q, absmax_offset: the 8-bit double-quantized absmax and its mean
    """

    kind: str
    bits: int
    shape: torch.Size
    dtype: torch.dtype
    group_size: int
    codes: torch.Tensor
    absmax: Optional[torch.Tensor] = None
    scale: Optional[torch.Tensor] = None
    zero_point: Optional[torch.Tensor] = None
    codebook: Optional[torch.Tensor] = None
    absmax_q: Optional["QuantizedTensor"] = None
    absmax_offset: Optional[torch.Tensor] = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def n_groups(self) -> int:
        return self.codes.shape[0]

    def group_absmax(self) -> torch.Tensor:
        """The absmax per group, undoing double quantization if used."""
        if self.absmax_q is not None:
            return self.absmax_q.dequantize() + self.absmax_offset  # (n_groups,)
        return self.absmax

    def dequantize(self) -> torch.Tensor:
        """Levels times constants, back in the original shape and dtype."""
        family = KINDS[self.kind][0]
        if family == "zeropoint":
            values = (self.codes.float() - self.zero_point[:, None]) * self.scale[:, None]
        else:
            if family == "codebook":
                levels = self.codebook[self.codes.long()]            # in [-1, 1]
            else:
                qmax = 2 ** (self.bits - 1) - 1
                levels = (self.codes.float() - qmax) / qmax          # in [-1, 1]
            values = levels * self.group_absmax()[:, None]           # (n_groups, g)
        return values.flatten()[: self.numel].reshape(self.shape).to(self.dtype)

    @property
    def nbytes(self) -> int:
        """Packed codes (bits each) + the constants (fp32, or 8-bit when double-quantized)."""
        code_bytes = math.ceil(self.numel * self.bits / 8)
        if self.scale is not None:  # zero-point: fp32 scale + 1-byte zero point per group
            return code_bytes + self.n_groups * (4 + 1)
        if self.absmax_q is not None:  # nested 8-bit absmax + the fp32 mean
            return code_bytes + self.absmax_q.nbytes + 4
        return code_bytes + self.n_groups * 4

    @property
    def bits_per_param(self) -> float:
        return 8 * self.nbytes / self.numel


# ---------------------------------------------------------------------------
# quantize
# ---------------------------------------------------------------------------

def _check_kind_bits(kind, bits) -> int:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}. Example: kind='nf4'.")
    family, default = KINDS[kind]
    if bits is None:
        return default
    if kind in ("int", "zeropoint"):
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(
                f"bits must be an integer in 2..8 for kind={kind!r}, got {bits!r}. "
                f"Example: bits=4."
            )
        return bits
    if bits != default:
        raise ValueError(
            f"kind={kind!r} always uses {default} bits, got bits={bits!r}. "
            f"Pass bits=None, or use kind='int' with bits={bits!r} for other widths."
        )
    return default


def _to_groups(w: torch.Tensor, blocksize) -> torch.Tensor:
    """Reshape w into (n_groups, group_size), zero-padding the last block.

    blocksize: a positive int (blockwise), None or "tensor" (one group),
    or "row" (one group per row w[i], i.e. per output channel of a weight).
    """
    flat = w.detach().float().flatten()
    if blocksize is None or blocksize == "tensor":
        return flat[None, :]                                   # (1, n)
    if blocksize == "row":
        if w.dim() < 2:
            raise ValueError(
                f"blocksize='row' needs a tensor with >= 2 dims, got shape {tuple(w.shape)}. "
                f"Use blocksize='tensor' or an integer blocksize."
            )
        return flat.reshape(w.shape[0], -1)                    # (rows, n/rows)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(
            f"blocksize must be a positive integer, 'row', 'tensor' or None, got {blocksize!r}. "
            f"Use blocksize=64 (QLoRA's choice)."
        )
    pad = (-flat.numel()) % blocksize
    return nn.functional.pad(flat, (0, pad)).reshape(-1, blocksize)  # (n_blocks, blocksize)


def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first n 4-bit codes of a uint8 tensor holding two per byte, the first in the high
    nibble (bitsandbytes' layout): (n,) uint8 codes in 0..15."""
    flat = packed.reshape(-1)
    return torch.stack([flat >> 4, flat & 0xF], dim=1).flatten()[:n]


def _nearest_level(scaled: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest level (levels sorted), via the midpoints between levels.

    bucketize finds i with midpoint[i-1] < x <= midpoint[i]; an exact tie goes
    to the lower level. This is how bitsandbytes rounds, so codes match it.
    """
    midpoints = (levels[:-1] + levels[1:]) / 2  # (15,) for 16 levels
    return torch.bucketize(scaled, midpoints).to(torch.uint8)


def _absmax_quantize(groups: torch.Tensor, family: str, bits: int, kind: str):
    """Symmetric quantization: scale each group by its absmax into [-1, 1].

    codebook (nf4, fp4): code = index of the nearest level, x_hat = level[code] * absmax
    int-k:  q = round(x / absmax * qmax), qmax = 2**(k-1) - 1 (127 for int8),
            x_hat = q * absmax / qmax
    """
    absmax = groups.abs().amax(dim=1)                               # (n_groups,)
    # multiply by the reciprocal, as bitsandbytes does, for bit-exact parity
    scaled = groups * (1.0 / absmax.clamp(min=1e-38))[:, None]      # (n_groups, g)
    scaled = scaled.clamp(-1, 1)
    if family == "codebook":
        codebook = _CODEBOOKS[kind]()
        return _nearest_level(scaled, codebook), absmax, codebook
    # int-k: levels -qmax..qmax (symmetric, so 0 is exact); stored offset by qmax
    qmax = 2 ** (bits - 1) - 1
    q = torch.round(scaled * qmax)                                  # in [-qmax, qmax]
    return (q + qmax).to(torch.uint8), absmax, None


def _zeropoint_quantize(groups: torch.Tensor, bits: int):
    """Asymmetric quantization: map [min, max] of each group onto 0..2**bits - 1.

    scale = (max - min) / (2**bits - 1),  zero_point = round(-min / scale),
    code = clamp(round(x / scale) + zero_point),  x_hat = (code - zero_point) * scale.
    The range is widened to include 0 so that 0 is represented exactly.
    """
    qmax = 2**bits - 1
    lo = groups.amin(dim=1).clamp(max=0)                             # (n_groups,)
    hi = groups.amax(dim=1).clamp(min=0)
    scale = ((hi - lo) / qmax).clamp(min=1e-38)
    zero_point = torch.round(-lo / scale).clamp(0, qmax)
    q = torch.round(groups / scale[:, None]) + zero_point[:, None]
    return q.clamp(0, qmax).to(torch.uint8), scale, zero_point


def _double_quantize(absmax: torch.Tensor):
    """QLoRA double quantization of the absmax constants.

    Subtract their mean (they are all positive, so centring uses the signed
    8-bit range well), then quantize to 8 bits in blocks of 256. bitsandbytes
    uses its 8-bit "dynamic" float code here; we use plain absmax int8,
    which costs the same bytes.
    """
    offset = absmax.mean()
    return quantize(absmax - offset, "int8", blocksize=DOUBLE_QUANT_BLOCKSIZE), offset


def quantize(
    w: torch.Tensor,
    kind: str,
    bits: Optional[int] = None,
    blocksize: Union[int, str, None] = 64,
    double_quant: bool = False,
) -> QuantizedTensor:
    """Quantize w; returns a QuantizedTensor (call .dequantize() to get w_hat).

    kind: "int8" / "int" (symmetric absmax, bits 2..8), "int8-zeropoint" /
          "zeropoint" (asymmetric, bits 2..8), "fp4", "nf4" (4 bits).
    blocksize: positive int (blockwise), "row", or None / "tensor" (per tensor).
    double_quant: also quantize the absmax constants to 8 bits (QLoRA).
    A w holding NaN or inf values is refused (ValueError with their counts).
    """
    if not isinstance(w, torch.Tensor) or not w.is_floating_point() or w.numel() == 0:
        raise TypeError(
            f"w must be a non-empty floating-point torch.Tensor, got {type(w).__name__}. "
            f"Pass e.g. layer.weight.data."
        )
    finite = torch.isfinite(w)
    if not finite.all():  # one NaN or inf makes its group's absmax NaN or inf: the block is lost
        n_nan = int(torch.isnan(w).sum())
        raise ValueError(
            f"w has {n_nan} NaN and {int((~finite).sum()) - n_nan} inf values out of {w.numel()} "
            f"(shape {tuple(w.shape)}); quantizing them would spoil their whole group. Find where "
            f"they came from (a diverged training step, a damaged file), or replace them with "
            f"torch.nan_to_num(w) if that is intended."
        )
    bits = _check_kind_bits(kind, bits)
    family = KINDS[kind][0]
    if double_quant and family == "zeropoint":
        raise ValueError(
            f"double_quant=True needs a symmetric kind (int8, int, fp4, nf4), got kind={kind!r}. "
            f"Set double_quant=False."
        )
    groups = _to_groups(w, blocksize)                     # (n_groups, group_size)
    common = dict(kind=kind, bits=bits, shape=w.shape, dtype=w.dtype, group_size=groups.shape[1])
    if family == "zeropoint":
        codes, scale, zero_point = _zeropoint_quantize(groups, bits)
        return QuantizedTensor(**common, codes=codes, scale=scale, zero_point=zero_point)
    codes, absmax, codebook = _absmax_quantize(groups, family, bits, kind)
    if double_quant:
        absmax_q, offset = _double_quantize(absmax)
        return QuantizedTensor(**common, codes=codes, codebook=codebook,
                               absmax_q=absmax_q, absmax_offset=offset)
    return QuantizedTensor(**common, codes=codes, absmax=absmax, codebook=codebook)


# ---------------------------------------------------------------------------
# error measures
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# whole models
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# one weight at k bits (what notebook 04's "bits" slider redraws)
# ---------------------------------------------------------------------------

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
