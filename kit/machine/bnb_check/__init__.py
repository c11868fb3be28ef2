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

    decode  reading 4-bit layers     probe  the check of this CPU     guard  what the kit does about it
"""
from kit.machine.bnb_check.decode import (PROBE_VALUES, TOLERANCE, Bnb4bitError, dequantize,  # noqa: F401
                                          has_avx512bf16, reference_weight)
from kit.machine.bnb_check.guard import fused_inference, protect  # noqa: F401
from kit.machine.bnb_check.probe import Probe, Report, _probe_layer, check, preflight  # noqa: F401
