"""The ledger: the memory of one real training step, read from its tensors (`measure_step`).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch

from kit.machine.device import profile
from kit.machine.models import parameter_count
from kit.scratch.lora import trainable_parameters

MB, GB = 1e6, 1e9


# ---------------------------------------------------------------------------- records
def _rows(d: dict) -> list[tuple[str, int, float]]:
    return [(k, v, round(v / MB, 2)) for k, v in d.items()]


@dataclass
class Ledger:
    """Bytes measured from the tensors of one real training step."""
    weights: int                 # every parameter once (4-bit layers: packed uint8)
    weights_by_dtype: dict       # "float32" -> bytes, ...
    quant_constants: int         # bnb absmax, nested absmax, code books, offsets, SCB
    trainable_params: int        # bytes of parameters with requires_grad
    trainable_count: int         # how many trainable parameters
    total_params: int            # parameters as defined (a packed 4-bit byte counts as two)
    gradients: int               # .grad of the trainable parameters after backward
    optimizer: int               # every tensor in optimizer.state after step
    activations: int             # saved for backward, each storage once, no parameters, no logits
    logits: int                  # the output logits tensor
    cuda_peak: int | None = None  # torch.cuda.max_memory_allocated over the step (None on CPU)

    @property
    def total(self) -> int:
        return (self.weights + self.quant_constants + self.gradients + self.optimizer
                + self.activations + self.logits)

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}

    def rows(self) -> list[tuple[str, int, float]]:
        """(component, bytes, MB) for a table."""
        keys = ("weights", "quant_constants", "gradients", "optimizer", "activations", "logits")
        return _rows({k: getattr(self, k) for k in keys} | {"total": self.total})


# ---------------------------------------------------------------------------- measuring
def _tensor_bytes(tensors, skip: set[int]) -> int:
    """Bytes of the tensors' storages, each storage once, skipping data pointers in `skip`."""
    total = 0
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        ptr = t.untyped_storage().data_ptr()
        if ptr and ptr not in skip:
            skip.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def _quant_tensors(model):
    """Quantization constants of bitsandbytes layers (4-bit quant_state, 8-bit SCB)."""
    for module in model.modules():
        w = getattr(module, "weight", None)
        state = getattr(w, "quant_state", None)
        while state is not None:                                     # nested: state.state2
            yield from (getattr(state, k, None) for k in ("absmax", "code", "offset"))
            state = getattr(state, "state2", None)
        yield getattr(w, "SCB", None)                               # 8-bit row scales, which the
        yield getattr(getattr(module, "state", None), "SCB", None)  # first forward moves to .state


def weight_bytes(model) -> dict:
    """Bytes of the weights by dtype, and of the bnb quantization constants."""
    by_dtype, seen = {}, set()
    for p in model.parameters():
        ptr = p.untyped_storage().data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        key = str(p.dtype).replace("torch.", "")
        by_dtype[key] = by_dtype.get(key, 0) + p.numel() * p.element_size()
    return {"weights": sum(by_dtype.values()), "weights_by_dtype": by_dtype,
            "quant_constants": _tensor_bytes(_quant_tensors(model), seen)}


def measure_step(model, batch: dict, optimizer, autocast="auto") -> Ledger:
    """Run one forward (recording what autograd saves), backward, optimizer step and zero_grad
    on `batch` (a dict with input_ids and labels), and return the bytes of each part.
    The model is put in training mode for the step (gradient checkpointing and dropout act only
    there) and returned to its previous mode after.

    autocast: the forward's autocast dtype. "auto" = what kit.engine.train does on this device (on
    CUDA the device policy's bf16 or fp16, on a CPU none); None = no autocast; or a dtype
    (torch.bfloat16 on a CPU imitates a GPU's 16-bit step, slowly)."""
    if batch.get("labels") is None:
        raise ValueError("batch must contain 'labels' (e.g. labels = input_ids) so the model "
                         "returns a loss to backpropagate.")
    if autocast not in ("auto", None, torch.float16, torch.bfloat16):
        raise ValueError(f"autocast must be 'auto', None, torch.float16 or torch.bfloat16; got {autocast!r}.")
    params = [p for p in model.parameters()]
    not_activations = {p.untyped_storage().data_ptr() for p in params}
    not_activations |= {t.untyped_storage().data_ptr() for t in _quant_tensors(model)
                        if isinstance(t, torch.Tensor)}
    saved = []                                       # every tensor autograd keeps for backward

    def pack(t):
        saved.append(t)
        return t

    device = params[0].device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    if autocast == "auto":
        autocast = profile().compute_dtype if cuda else None
    amp = (torch.autocast(device.type, dtype=autocast) if autocast is not None
           else contextlib.nullcontext())
    was_training = model.training
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), amp:
        out = model(**batch)
    logits = out.logits
    logits_bytes = _tensor_bytes([logits], set())
    activations = _tensor_bytes(saved, not_activations | {logits.untyped_storage().data_ptr()})
    saved.clear()
    out.loss.backward()
    trainable = [p for p in params if p.requires_grad]
    gradients = _tensor_bytes([p.grad for p in trainable], set())
    optimizer.step()
    state = [v for s in optimizer.state.values() for v in s.values()]
    optimizer_bytes = _tensor_bytes(state, set())
    optimizer.zero_grad(set_to_none=True)
    del out, logits
    peak = None
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    model.train(was_training)
    return Ledger(**weight_bytes(model),
                  trainable_params=sum(p.numel() * p.element_size() for p in trainable),
                  trainable_count=trainable_parameters(model), total_params=parameter_count(model),
                  gradients=gradients, optimizer=optimizer_bytes, activations=activations,
                  logits=logits_bytes, cuda_peak=peak)
