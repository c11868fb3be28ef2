"""The check: bitsandbytes' 4-bit decode against the reference on one small tensor per shape, and a
backward pass after an eval pass (`check`, `preflight`).
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import torch

from kit.machine.bnb_check.decode import (PROBE_VALUES, TOLERANCE, _decode_with_kit, _unpack, has_avx512bf16,
                                          reference_weight)


# ---------------------------------------------------------------------------- probes
@dataclass
class Probe:
    """One weight shape measured: errors are the largest absolute difference over the largest
    weight (0 = exact); gradient: did the backward pass reach the layer's input, and right?"""
    shape: tuple[int, int]          # (out, in) of the layers; the probe may have fewer rows
    blocksize: int
    quant_type: str
    dequantize_error: float         # bitsandbytes' dequantize_4bit vs the decode by hand
    forward_error: float            # the layer's forward vs x @ W.T (after the eval forward)
    gradient: bool                  # the input's gradient is there and equals g @ W
    gradient_reached: bool          # the input's gradient is there at all
    decoded_by_kit: bool = False    # the kit's decode replaced bitsandbytes' for this shape

    @property
    def ok(self) -> bool:
        return self.forward_error <= TOLERANCE and self.gradient and (
            self.decoded_by_kit or self.dequantize_error <= TOLERANCE)


@dataclass
class Report:
    """status: "exact" (bitsandbytes alone is right here), "worked around" (right with the
    kit's workarounds, listed) or "wrong" (not right even so; problems lists what)."""
    device: str
    status: str
    workarounds: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    repacking: Probe | None = None  # a layer trained after bitsandbytes repacked it (if it would)

    @property
    def line(self) -> str:
        where = "this CPU" if self.device == "cpu" else f"this {self.device.upper()} device"
        detail = self.problems if self.status == "wrong" else self.workarounds
        return f"bitsandbytes 4-bit on {where}: {self.status}" + (f" ({'; '.join(detail)})" if detail else "")

    def decoded_shapes(self) -> set:
        return {(p.shape, p.blocksize, p.quant_type) for p in self.probes if p.decoded_by_kit}

    def as_dict(self) -> dict:
        return {"device": self.device, "status": self.status, "line": self.line,
                "workarounds": list(self.workarounds), "problems": list(self.problems),
                "probes": [_probe_dict(p) for p in self.probes],
                "repacking": _probe_dict(self.repacking) if self.repacking else None}


def _probe_dict(p: Probe) -> dict:
    return dict(p.__dict__, shape=list(p.shape), ok=p.ok)


def _probe_layer(shape, blocksize: int, quant_type: str, nested: bool, fused: bool, seed: int = 0):
    """A Linear4bit holding a random weight of `shape` (rows trimmed to about PROBE_VALUES),
    quantized as the model's layers are; `fused`: bitsandbytes' CPU repacking flag."""
    import bitsandbytes as bnb  # optional: a CPU-only install may lack it
    out_f, in_f = shape
    rows = min(out_f, max(64, PROBE_VALUES // in_f // 64 * 64))
    g = torch.Generator().manual_seed(seed)
    layer = bnb.nn.Linear4bit(in_f, rows, bias=False, compute_dtype=torch.float32,
                              compress_statistics=nested, quant_type=quant_type)
    weight = torch.randn(rows, in_f, generator=g) * 0.02
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, blocksize=blocksize,
                                     compress_statistics=nested, quant_type=quant_type, module=layer)
    layer.weight = layer.weight.to("cpu")                     # quantizes
    layer.support_avx512bf16_for_cpu = fused
    return layer


def _measure(layer, shape, decoded: bool) -> Probe:
    """Score the probe as the kit uses a model: an eval forward without gradients first (the
    base scored before training), then a training forward and backward."""
    import bitsandbytes as bnb  # optional: a CPU-only install may lack it
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, layer.in_features, generator=g)
    layer.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer(x[:1])
    packed = getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    layer.train()
    x.requires_grad_(True)
    with warnings.catch_warnings():   # torch warns of the missing autograd kernel: what we test
        warnings.simplefilter("ignore")
        y = layer(x)
        if y.requires_grad:           # a layer cut from the graph has nothing to go back through
            y.backward(torch.ones_like(y))
    if packed:      # the repacked bytes are not the usual layout: the reference needs them back
        _unpack(layer)
    w = reference_weight(layer.weight)
    scale = w.abs().max().item()
    theirs = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    forward_error = (y.detach() - x.detach() @ w.T).abs().max().item() / scale
    expected = torch.ones_like(y) @ w                          # dL/dx for L = sum(y)
    gradient = x.grad is not None and bool(
        (x.grad - expected).abs().max() <= 1e-4 * expected.abs().max())
    return Probe(tuple(shape), layer.weight.quant_state.blocksize, layer.weight.quant_state.quant_type,
                 (theirs - w).abs().max().item() / scale, forward_error, bool(gradient),
                 x.grad is not None, decoded)


def _repacking_fault() -> tuple[Probe | None, str | None]:
    """Train a layer that bitsandbytes' CPU inference repacking was allowed to repack: (the
    probe, what went wrong or None)."""
    try:
        probe = _measure(_probe_layer((128, 64), 64, "nf4", True, fused=True), (128, 64), False)
    except Exception as e:       # the repacking itself failed: it is no use here either
        return None, f"it failed: {type(e).__name__}"
    if not probe.gradient_reached:
        return probe, "after an eval pass it cut the gradient"
    if probe.forward_error > TOLERANCE or not probe.gradient:
        return probe, f"after an eval pass its forward was off by {probe.forward_error:.2g}"
    return probe, None


@functools.lru_cache(maxsize=None)
def check(shapes: tuple = ((576, 576), (1536, 576), (576, 1536)), blocksize: int = 64,
          quant_type: str = "nf4", nested: bool = True, fused: bool | None = None) -> Report:
    """Measure bitsandbytes' 4-bit on this CPU for weights of `shapes` ((out, in) pairs).

    fused: the repacking flag to test (None: what bitsandbytes picks on this CPU; True forces
    the repacking, as on an AVX512-BF16 CPU). Cached: each set of shapes is measured once."""
    if fused is None:
        fused = has_avx512bf16()
    report = Report("cpu", "exact")
    fault = None
    if fused:
        report.repacking, fault = _repacking_fault()
    if fault:
        report.workarounds.append(f"fused bf16 repacking switched off: {fault}")
    for shape in dict.fromkeys(tuple(s) for s in shapes):
        probe = _measure(_probe_layer(shape, blocksize, quant_type, nested, fused=False), shape, False)
        if probe.dequantize_error > TOLERANCE:          # fault 2: decode this shape with kit.scratch.quant
            layer = _probe_layer(shape, blocksize, quant_type, nested, fused=False)
            _decode_with_kit(layer)
            fixed = _measure(layer, shape, True)
            fixed.dequantize_error = probe.dequantize_error
            report.workarounds.append(f"{shape[0]} x {shape[1]} at block size {blocksize} decoded by "
                                      f"kit.scratch.quant (bitsandbytes' decode off by {probe.dequantize_error:.0%} of the largest weight)")
            probe = fixed
        report.probes.append(probe)
        if not probe.ok:
            report.problems.append(f"{shape[0]} x {shape[1]} at block size {blocksize}: forward off by "
                                   f"{probe.forward_error:.2g}, gradient {'right' if probe.gradient else 'wrong'}")
    if report.problems:
        report.status = "wrong"
    elif report.workarounds:
        report.status = "worked around"
    return report


def preflight() -> Report | None:
    """The check on the bundled model's layer shapes plus one row length that is not whole
    blocks of 64 (a model that has such rows meets fault 2). None without bitsandbytes or on a
    GPU (the faults above are in the CPU kernels)."""
    try:
        import bitsandbytes  # noqa: F401  optional
    except ImportError:
        return None
    if torch.cuda.is_available():
        return Report("cuda", "not checked", ["the two known faults are in the CPU kernels"])
    return check(((576, 576), (192, 576), (1536, 576), (576, 1536), (128, 96)))
