"""The levels a value can take: the kinds of quantizer (int, zero point, code book) and the two
4-bit code books, NF4 (QLoRA's NormalFloat) and FP4 (E2M1).
"""
from __future__ import annotations

import torch

# kind -> (family, default bits)
KINDS = {
    "int8": ("int", 8),                    # symmetric absmax, 8 bits
    "int": ("int", 8),                     # symmetric absmax, `bits` in 2..8
    "int8-zeropoint": ("zeropoint", 8),    # asymmetric: scale + zero point
    "zeropoint": ("zeropoint", 8),         # asymmetric, `bits` in 2..8
    "fp4": ("codebook", 4),                # 4-bit float E2M1
    "nf4": ("codebook", 4),                # 4-bit NormalFloat (QLoRA)
}


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
