"""Is bitsandbytes' 4-bit right on this CPU? The kit's own NF4 and a gradient are the oracles.

bitsandbytes 0.50 has two silent faults on some CPUs (measured in this project, 2026-12-03):

1. On CPUs with AVX512-BF16 (AMD Zen 4/5, recent Xeons) a `Linear4bit` repacks its weight for a
   fused bf16 inference kernel on its first forward in eval mode without gradients, and keeps
   that layout. From then on the layer computes in bf16 and passes no gradient to its input: a
   QLoRA model scored before training trains with its gradient cut at every 4-bit layer, and a
   merge that reads the repacked bytes as the usual layout gets the weights wrong.
2. On AVX-512 CPUs `dequantize_4bit` is wrong where a block of the weight crosses the end of a
   row (a row length that is not a multiple of the block size).

`check(...)` measures both here, on one small probe layer per weight shape: bitsandbytes'
dequantized weight against a decode by hand of its own codes with `kit.scratch.quant`, its forward
against `x @ W.T` with that weight, and a backward pass that must reach the input.
`protect(model)` (load_model and prepare_model call it) keeps the repacking off every 4-bit
layer, unpacks a layer already repacked, and gives the layers whose shape fault 2 hits a forward
that decodes the weight with kit.scratch.quant. What it found is one line, `Report.line`.
"""
from __future__ import annotations

import functools
import types
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kit.scratch import quant
from kit.errors import UserError

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


def protect(model, verbose: bool = True) -> Report | None:
    """Make every bitsandbytes 4-bit layer of `model` compute with its weights, as trained:
    repacking off (and undone where an eval already did it), kit.scratch.quant's decode for shapes
    where bitsandbytes' is wrong here. Returns the check's Report (None: no 4-bit layers);
    prints its line once when it is not "exact"; raises Bnb4bitError where it is "wrong"."""
    try:
        import bitsandbytes as bnb  # optional: a CPU-only install may lack it
    except ImportError:
        return None
    layers = {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    if not layers:
        return None
    unpacked = [n for n, m in layers.items() if _unpack(m)]
    if unpacked and verbose:
        print(f"{len(unpacked)} 4-bit layers had been repacked by an inference pass (bf16, no "
              f"gradients) and are unpacked; their block constants stay rounded to bf16: reload "
              f"the model for its exact weights.")
    first = next(iter(layers.values())).weight
    if first.device.type != "cpu":
        return None
    groups: dict[tuple, list[str]] = {}
    for name, m in layers.items():
        qs = m.weight.quant_state
        groups.setdefault((qs.blocksize, qs.quant_type, qs.nested), []).append(name)
    reports = []
    for (bs, qtype, nested), names in groups.items():
        shapes = tuple(sorted({tuple(layers[n].weight.quant_state.shape) for n in names}))
        report = check(shapes, bs, qtype, nested)
        if report.status == "wrong":
            bad = next(p for p in report.probes if not p.ok)
            name = next(n for n in names if tuple(layers[n].weight.quant_state.shape) == bad.shape)
            raise Bnb4bitError(
                f"bitsandbytes 4-bit computes wrong results on this CPU for layer {name} (shape "
                f"{bad.shape[0]} x {bad.shape[1]}, block size {bs}, {qtype}): {report.problems[0]}. "
                f"Fix: load the model without quantization (quantization=None, method='lora'), run "
                f"on a CUDA GPU, or try another bitsandbytes release (pip install -U bitsandbytes).")
        for name in names:
            qs = layers[name].weight.quant_state
            if (tuple(qs.shape), bs, qtype) in report.decoded_shapes():
                _decode_with_kit(layers[name])
        reports.append(report)
    merged = Report("cpu", max((r.status for r in reports), key=["exact", "worked around"].index),
                    [w for r in reports for w in r.workarounds], [], [p for r in reports for p in r.probes])
    if verbose and merged.status != "exact":
        _say_once(merged.line)
    return merged


@functools.lru_cache(maxsize=None)
def _say_once(line: str) -> None:
    print(line, flush=True)


def has_avx512bf16() -> bool:
    """Does bitsandbytes see AVX512-BF16 on this CPU (and so repack layers on its own)?"""
    import bitsandbytes as bnb  # optional: a CPU-only install may lack it
    return bool(bnb.functional.has_avx512bf16())


def fused_inference(model) -> int:
    """The stated choice for chat after training: let bitsandbytes repack the 4-bit layers
    for its fused bf16 CPU kernel (faster generation, answers within bf16 rounding). The model
    must not be trained or merged afterwards without protect() (prepare_model and the kit's
    merge call it, and say that the repacking rounded the block constants to bf16: for the exact
    weights, train a fresh load). Returns how many layers may repack (0 on a CPU without
    AVX512-BF16)."""
    import bitsandbytes as bnb  # optional: a CPU-only install may lack it
    if not has_avx512bf16():
        return 0
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)
              and not getattr(m, "kit_decoded", False) and m.out_features % 32 == 0]
    for m in layers:
        m.support_avx512bf16_for_cpu = True
    return len(layers)
