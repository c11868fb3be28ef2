"""LoRA from scratch, in plain torch.

Low-Rank Adaptation (Hu et al., 2021) freezes a pretrained weight W (out, in)
and learns a low-rank update instead of W itself:

    W' = W + delta_W,    delta_W = B @ A * scaling
    A: (r, in)   B: (out, r)   r << min(in, out)

so a layer trains r * (in + out) numbers instead of in * out.

    scaling = lora_alpha / r           (original LoRA)
    scaling = lora_alpha / sqrt(r)     (rsLoRA, Kalajdzievski 2023: keeps the
                                        update's size stable as r grows)

B starts at zero, so a freshly wrapped layer computes exactly what the base
layer computes; training moves B (and A) away from zero.

Names follow the paper and the `peft` library: `base_layer`, `lora_A`,
`lora_B`, `r`, `lora_alpha`, `scaling`.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence, Union

import torch
import torch.nn as nn

from kit.arch import target_modules

__all__ = [
    "LoRALinear",
    "check_hparams",
    "inject",
    "trainable_parameters",
    "lora_parameter_count",
    "merge_all",
    "unmerge_all",
    "energy_share",
]


# ---------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------

def check_hparams(r, alpha, dropout) -> None:
    """The one check of the LoRA hyper-parameters (kit.engine.train uses it too): a helpful
    error for a bad r, alpha or dropout, naming both this module's and peft's names."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(
            f"r must be an integer >= 1, got {r!r} (lora_r in kit.engine.train.TrainConfig). Use r=8 for a typical adapter."
        )
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(
            f"alpha (lora_alpha) must be a number > 0, got {alpha!r}. "
            f"A common choice is alpha=2*r (e.g. alpha=16 for r=8)."
        )
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(
            f"dropout must be a number in [0, 1), got {dropout!r} (lora_dropout in kit.engine.train.TrainConfig). "
            f"Use dropout=0.0 (off) or a small value such as 0.05."
        )


# ---------------------------------------------------------------------------
# the LoRA layer
# ---------------------------------------------------------------------------

class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update.

    forward(x) = base_layer(x) + dropout(x) @ lora_A.T @ lora_B.T * scaling
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
    ):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(
                f"base must be an nn.Linear, got {type(base).__name__}. "
                f"LoRALinear wraps linear layers only; pick a Linear module as target."
            )
        check_hparams(r, alpha, dropout)

        self.base_layer = base
        self.base_layer.requires_grad_(False)  # the pretrained weight stays frozen

        self.in_features = base.in_features
        self.out_features = base.out_features
        self.r = r
        self.lora_alpha = alpha
        self.use_rslora = use_rslora
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r

        # The adapter lives in float32 even when the base is fp16/bf16 (or, in
        # QLoRA, 4-bit): the QLoRA paper keeps adapters in 16/32-bit so the small
        # trainable update is not drowned by low-precision rounding. forward()
        # casts the input to the adapter dtype and the result back.
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=device))   # (r, in)
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r, device=device))  # (out, r)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A ~ Kaiming-uniform (as nn.Linear initialises its weight), B = 0.

        With B = 0 the update B @ A is zero, so training starts from the
        pretrained model exactly.
        """
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """The weight update B @ A * scaling, shape (out, in), in adapter dtype."""
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, r) @ (r, in) -> (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)  # (..., out)
        if self.merged:  # the update is already inside base_layer.weight
            return result
        x_a = self.lora_dropout(x.to(self.lora_A.dtype))      # (..., in)
        update = (x_a @ self.lora_A.T) @ self.lora_B.T         # (..., r) -> (..., out)
        return result + (update * self.scaling).to(result.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + B @ A * scaling: inference then costs nothing extra.

        Note: merging into a fp16/bf16 base rounds the update to that dtype.
        """
        if self.merged:
            raise RuntimeError(
                "This LoRALinear is already merged; merging twice would add the update "
                "twice. Call unmerge() first, or check the `merged` attribute."
            )
        weight = self.base_layer.weight
        weight += self.delta_weight().to(weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - B @ A * scaling (undo merge(); exact up to float rounding)."""
        if not self.merged:
            raise RuntimeError(
                "This LoRALinear is not merged, so there is nothing to unmerge. "
                "Call merge() first, or check the `merged` attribute."
            )
        weight = self.base_layer.weight
        weight -= self.delta_weight().to(weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"r={self.r}, lora_alpha={self.lora_alpha}, scaling={self.scaling:.4g}, "
            f"merged={self.merged}"
        )


# ---------------------------------------------------------------------------
# putting adapters into a model
# ---------------------------------------------------------------------------

def inject(
    model: nn.Module,
    r: int,
    alpha: float,
    targets: Union[str, Sequence[str]] = "all-linear",
    dropout: float = 0.0,
    use_rslora: bool = False,
) -> list[str]:
    """Wrap the targeted nn.Linear modules in LoRALinear, in place.

    targets: "all-linear" (every Linear except `lm_head`) or a list of name
    suffixes such as ["q_proj", "v_proj"]. Every other parameter of the model
    is frozen, so only lora_A / lora_B train. Returns the replaced names.
    """
    check_hparams(r, alpha, dropout)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)
               and n.rpartition(".")[2] in (targets if isinstance(targets, (list, tuple)) else ())]
    if wrapped:
        raise ValueError(f"module {wrapped[0]!r} already is a LoRALinear; inject() was applied before. "
                         "Use a fresh model or different targets.")
    names = target_modules(model, targets)  # validate everything before changing the model
    if not names:
        raise ValueError("targets='all-linear' found no nn.Linear to adapt (lm_head is skipped). "
                         "To adapt a single layer, wrap it directly: LoRALinear(layer, r=8, alpha=16).")
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout, use_rslora))
    return names


# ---------------------------------------------------------------------------
# counting and merging helpers
# ---------------------------------------------------------------------------

def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters with requires_grad=True."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_parameter_count(
    model_or_shapes: Union[nn.Module, Iterable[tuple[int, int]]], r: int | None = None
) -> int:
    """Closed form: sum over adapted layers of r * (in + out).

    Pass a model (counts its LoRALinear layers; r defaults to each layer's own
    r) or a list of (in_features, out_features) pairs together with r.
    """
    if isinstance(model_or_shapes, nn.Module):
        layers = [m for m in model_or_shapes.modules() if isinstance(m, LoRALinear)]
        return sum((r or m.r) * (m.in_features + m.out_features) for m in layers)
    if r is None:
        raise ValueError(
            "r is required when counting from shapes, got r=None. "
            "Example: lora_parameter_count([(4096, 4096)], r=8)."
        )
    check_hparams(r, 1.0, 0.0)
    return sum(r * (fan_in + fan_out) for fan_in, fan_out in model_or_shapes)


def merge_all(model: nn.Module) -> int:
    """Merge every unmerged LoRALinear; returns how many were merged."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear) and not m.merged]
    for m in layers:
        m.merge()
    return len(layers)


def unmerge_all(model: nn.Module) -> int:
    """Unmerge every merged LoRALinear; returns how many were unmerged."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear) and m.merged]
    for m in layers:
        m.unmerge()
    return len(layers)


# ---------------------------------------------------------------------------
# why low rank works
# ---------------------------------------------------------------------------

def energy_share(singular_values, r: int) -> float:
    """Share of a matrix's squared Frobenius norm in its top r singular directions:
    sum(s[:r]**2) / sum(s**2) -- what the best rank-r approximation keeps."""
    s2 = [float(s) ** 2 for s in singular_values]
    total = sum(s2)
    return sum(s2[:r]) / total if total else 0.0


def loftq_factors(residual: torch.Tensor, r: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """LoftQ's initialisation, one iteration (Li et al. 2023): the adapter starts as the best
    rank-r approximation of what quantization lost, residual = W - dequantize(quantize(W)).

    SVD: residual = U S V^T. The Eckart-Young theorem says U_r S_r V_r^T (the r largest singular
    values) is the closest rank-r matrix to it in the Frobenius norm. LoRA adds B A * scaling, so
    B (out, r) = U_r sqrt(S_r / scaling) and A (r, in) = sqrt(S_r / scaling) V_r^T give
    B A * scaling = U_r S_r V_r^T. -> (A, B) in fp32."""
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= min(residual.shape):
        raise ValueError(f"r must be a whole number in 1..{min(residual.shape)} for a residual of shape "
                         f"{tuple(residual.shape)}; got {r!r}.")
    if not scaling > 0:
        raise ValueError(f"scaling (lora_alpha / r) must be > 0; got {scaling!r}.")
    U, S, Vh = torch.linalg.svd(residual.float(), full_matrices=False)   # (out, k), (k,), (k, in)
    root = (S[:r] / scaling).sqrt()
    return root[:, None] * Vh[:r], U[:, :r] * root[None, :]               # A (r, in), B (out, r)
