"""Where the memory of a fine-tuning step goes: measured (`Ledger`) and predicted (`Estimate`).

Training memory has five parts (B = batch, T = tokens per sequence, N = B*T, P = parameters):

| part          | full fine-tuning (AdamW)          | LoRA / QLoRA                             |
|---------------|-----------------------------------|------------------------------------------|
| weights       | P x 4 (fp32 master) or 2 (16-bit) | frozen base (2, 1 or ~0.52 B/param) + adapters (fp32) |
| gradients     | one per trainable parameter       | adapters only                            |
| optimizer     | Adam m and v: 2 per trainable     | adapters only                            |
| activations   | what autograd saves for backward  | the same path back, minus the weights' gradients |
| logits        | N x vocab (plus an fp32 copy in the loss) | same                             |

`measure_step` reads these from the tensors of one real step; `estimate` computes them from
the architecture alone. On the bundled model (fp32 on a CPU) the two agreed to the byte for
every component, activations included, for full fine-tuning, LoRA and QLoRA (tests/test_memory.py
holds them to 2% and 15%), which is what lets us trust `estimate` for models we cannot load.

Accounting conventions (the same on both sides):
- weights: every parameter once (tied embeddings once). bitsandbytes 4-bit layers count their
  packed uint8 weight here and their quantization constants (absmax, nested absmax, code
  books, offset; 8-bit: the per-row scales SCB) in `quant_constants`. Buffers (rotary
  inv_freq, a few hundred bytes) are not counted.
- activations: tensors saved for backward (`torch.autograd.graph.saved_tensors_hooks`), each
  storage once, excluding parameters (a Linear saves its weight; that is not an activation)
  and excluding the logits tensor itself, which is its own line. The loss's fp32
  log-probabilities (N x vocab x 4 bytes) are an activation.
- full fine-tuning with precision "amp" = 16 B/param: fp32 master weights 4 + fp32 gradients 4
  + Adam m and v in fp32 8. The 16-bit copies of the weights that autocast makes for the
  matmuls are cached for the forward and kept for the backward: an activation row. "16" = pure 16-bit: 2 + 2 + 4
  = 8 B/param. "32" = fp32 everything = 16 B/param (what a CPU does).
- QLoRA: the unquantized parameters (embeddings, norms, untied head) are counted in fp32,
  because peft's `prepare_model_for_kbit_training` (which kit.engine.train calls) casts 16-bit
  ones to fp32. Adapters are fp32 (the kit's policy for trainable parameters).
- `Estimate.workspace`: memory that exists only at the peak of backward and that no saved-
  tensor hook sees: the fp32 gradient of the logits, and with gradient checkpointing one
  decoder layer's recomputed activations. It is part of `Estimate.total`, not of the Ledger.

    ledger       the memory of a real step     estimator  the memory computed from the shapes
    activations  the estimator's activation rows  fit   does it fit on a GPU
"""
from kit.machine.memory.activations import activation_rows  # noqa: F401
from kit.machine.memory.estimator import (PRECISIONS, Estimate, compare, estimate,  # noqa: F401
                                          estimate_settings)
from kit.machine.memory.fit import fits, gpu_fit, gpu_fit_text, largest_model_that_fits  # noqa: F401
from kit.machine.memory.ledger import GB, MB, Ledger, measure_step, weight_bytes  # noqa: F401
