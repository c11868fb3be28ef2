"""Quantizing a tensor: groups, one constant per group, the nearest level's code; double
quantization of the constants; `QuantizedTensor` dequantizes and counts its bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn as nn

from kit.scratch.quant.codebooks import _CODEBOOKS, KINDS

DOUBLE_QUANT_BLOCKSIZE = 256  # QLoRA: absmax constants quantized in blocks of 256


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
