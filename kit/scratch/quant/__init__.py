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

    codebooks  the kinds and the 4-bit code books    tensor  quantize a tensor, and back
    error      what it costs, per tensor and per model
"""
from kit.scratch.quant.codebooks import KINDS, fp4_codebook, nf4_codebook  # noqa: F401
from kit.scratch.quant.error import (bits_view, error_report, fake_quantize_model,  # noqa: F401
                                     max_abs_error, mse, sqnr_db)
from kit.scratch.quant.tensor import (DOUBLE_QUANT_BLOCKSIZE, QuantizedTensor, quantize,  # noqa: F401
                                      unpack_nibbles)
