"""Reading bitsandbytes' 4-bit layers: its codes decoded by kit.scratch.quant (the reference), its own
decode, a repacked layer unpacked, and whether this CPU has the fused bf16 path at all.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from kit.errors import UserError
from kit.scratch import quant

TOLERANCE = 1e-5      # relative to the largest weight: fp32 rounding, not a wrong decode


PROBE_VALUES = 1 << 20  # a probe layer holds at most about a million weights (rows trimmed)


class Bnb4bitError(UserError):
    """bitsandbytes' 4-bit layers compute something else than their weights here, even with the
    kit's workarounds: the message names the layer, its shape, the block size and the fix."""


# ---------------------------------------------------------------------------- the oracle
def reference_weight(weight) -> torch.Tensor:
    """The (out, in) fp32 weight of a bitsandbytes Params4bit, decoded by hand with kit.scratch.quant
    from bitsandbytes' own bytes: two codes per byte (high nibble first), one absmax per block
    of `blocksize` consecutive values, the absmax itself 8-bit coded when double-quantized."""
    qs = weight.quant_state
    if getattr(qs, "packing_format_for_cpu", False):
        raise ValueError("this 4-bit weight is in bitsandbytes' CPU inference layout; call "
                         "kit.machine.bnb_check.protect(model) first, which unpacks it.")
    n, bs = qs.shape[0] * qs.shape[1], qs.blocksize
    codes = quant.unpack_nibbles(weight.data.view(torch.uint8).reshape(-1), n)
    codes = F.pad(codes, (0, (-n) % bs)).view(-1, bs)                    # (n_blocks, blocksize)
    absmax = qs.absmax.float()
    if qs.nested:                                   # 8-bit "dynamic" code, 256 constants a block
        inner = qs.state2
        levels = inner.code.float()[qs.absmax.long()]
        m = levels.numel()
        levels = F.pad(levels, (0, (-m) % inner.blocksize)).view(-1, inner.blocksize)
        absmax = (levels * inner.absmax.float()[:, None]).flatten()[:m] + qs.offset.float()
    codebook = quant.nf4_codebook() if qs.quant_type == "nf4" else qs.code.float().cpu()
    qt = quant.QuantizedTensor(kind=qs.quant_type, bits=4, shape=torch.Size(qs.shape),
                               dtype=torch.float32, group_size=bs, codes=codes.cpu(),
                               absmax=absmax.cpu(), codebook=codebook)
    return qt.dequantize().to(weight.device)


def dequantize(layer) -> torch.Tensor:
    """A Linear4bit's weight (out, in) in fp32: bitsandbytes' decode, or kit.scratch.quant's where
    protect() found bitsandbytes wrong for this shape. A repacked layer is unpacked first."""
    import bitsandbytes as bnb  # optional: a CPU-only install may lack it
    _unpack(layer)
    if getattr(layer, "kit_decoded", False):
        return reference_weight(layer.weight)
    return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()


# ---------------------------------------------------------------------------- on a model
def _unpack(layer) -> bool:
    """Undo bitsandbytes' CPU inference repacking of one layer; True if it was repacked. Its
    absmax constants were rounded to bf16 by the repacking: close to, not equal to, the load."""
    import bitsandbytes.functional as bnbF  # optional: a CPU-only install may lack it
    layer.support_avx512bf16_for_cpu = False
    if not getattr(layer.weight.quant_state, "packing_format_for_cpu", False):
        return False
    layer.weight.data, layer.weight.quant_state = bnbF._convert_weight_packed_for_cpu_inverse(
        layer.weight.data, layer.weight.quant_state)
    return True


def _decoded_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A Linear4bit's forward with the weight decoded by kit.scratch.quant: y = x W^T (+ b)."""
    dtype = self.compute_dtype or x.dtype
    w = reference_weight(self.weight).to(dtype)
    bias = None if self.bias is None else self.bias.to(dtype)
    return F.linear(x.to(dtype), w, bias).to(x.dtype)


def _decode_with_kit(layer) -> None:
    layer.forward = types.MethodType(_decoded_forward, layer)
    layer.kit_decoded = True


def has_avx512bf16() -> bool:
    """Does bitsandbytes see AVX512-BF16 on this CPU (and so repack layers on its own)?"""
    import bitsandbytes as bnb  # optional: a CPU-only install may lack it
    return bool(bnb.functional.has_avx512bf16())
