"""The guard: the fused bf16 repacking switched off on every 4-bit layer, a repacked layer unpacked,
the reference decode where bitsandbytes' is wrong (`protect`); `fused_inference` turns the fused path
back on, as a stated choice, for generation only.
"""
from __future__ import annotations

import functools

from kit.machine.bnb_check.decode import Bnb4bitError, _decode_with_kit, _unpack, has_avx512bf16
from kit.machine.bnb_check.probe import Report, check


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
