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
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field

import torch

from kit.arch import (LINEAR_NAMES, METHOD_NAMES, METHODS, OPTIMIZERS, Arch, by_size,
                      check_method, check_target_names, gpu_bytes, linear_shapes, param_count,
                      param_groups, quantization, resolve_arch)
from kit.machine.device import profile
from kit.scratch.lora import check_hparams, trainable_parameters
from kit.machine.models import parameter_count

MB, GB = 1e6, 1e9
PRECISIONS = ("amp", "16", "32")   # full fine-tuning: fp32 master weights + 16-bit compute, all 16, all 32


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


@dataclass
class Estimate:
    """Bytes predicted from the architecture; the same components as `Ledger` + workspace."""
    weights: int                 # base weights + adapters
    quant_constants: int         # 4-bit: absmax etc.; 8-bit: per-row scales
    gradients: int
    optimizer: int
    activations: int             # saved for backward during the forward pass
    logits: int
    workspace: int               # transient at the backward peak (see module docstring)
    params: int                  # parameters of the base model
    trainable: int               # trainable parameters
    settings: dict = field(default_factory=dict)   # the arguments that produced it
    activation_rows: list = field(default_factory=list)  # (what, bytes): the activation formula

    @property
    def total(self) -> int:
        return (self.weights + self.quant_constants + self.gradients + self.optimizer
                + self.activations + self.logits + self.workspace)

    def as_dict(self) -> dict:
        d = {**asdict(self), "total": self.total}
        d.pop("activation_rows")
        return d

    def rows(self) -> list[tuple[str, int, float]]:
        keys = ("weights", "quant_constants", "gradients", "optimizer", "activations", "logits",
                "workspace")
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


# ---------------------------------------------------------------------------- estimating
def _lora_params(a: Arch, tg: tuple, r: int) -> int:
    """Numbers in the adapters: r x (in + out) per targeted Linear, every layer."""
    shapes = linear_shapes(a)
    return a.num_hidden_layers * sum(r * (shapes[t][0] + shapes[t][1]) * shapes[t][2] for t in tg)


def _targets(targets) -> tuple[str, ...]:
    return check_target_names(targets, LINEAR_NAMES)


def _layer_rows(a: Arch, B: int, T: int, A: int, full: bool, amp: bool, tg: tuple, r: int,
                dropout: bool, padded: bool, x_grad: bool, q32: bool = False) -> list[tuple[str, int]]:
    """What autograd saves in one decoder layer, following which tensors need a gradient.

    x_grad: does the layer's input need a gradient? (Not in layer 0 of LoRA: the embeddings
    are frozen, so everything below the first adapter saves nothing.) An op saves a tensor only
    if the gradient of another input needs it: a frozen Linear keeps no input, a LoRA A keeps
    its input, SDPA keeps q, k, v, output and logsumexp once q, k or v needs a gradient.

    q32: QLoRA in 16 bits. prepare_model_for_kbit_training leaves the embeddings and norms in
    fp32, and a bitsandbytes 4-bit Linear returns its input's dtype, so the residual stream
    and the MLP's tensors stay fp32; only what autocast casts for a matmul (LoRA A's input,
    SDPA's q, k, v) is 16-bit.
    """
    H, I, k, nh = a.hidden_size, a.intermediate_size, a.experts_per_token, a.num_attention_heads
    N, qd, kvd = B * T, nh * a.hd, (nh if padded else a.num_key_value_heads) * a.hd
    res = 4 if amp or q32 else A            # residual stream: fp32 under autocast
    mlp = 4 if q32 else A                   # MLP tensors: fp32 behind a 4-bit Linear in QLoRA
    mask_b = A if A == 4 else 1             # dropout mask: float on a CPU, bool on a GPU
    cast = A < 4                            # autocast casts each LoRA A's input separately
    rows = []

    def keep(what, nbytes, when=True):
        if when and nbytes:
            rows.append((what, nbytes))

    def linear_inputs(what, names, width, input_grad):
        """The input shared by the Linears `names` (width features, per token)."""
        n = sum(t in tg for t in names)
        if full:                             # weight gradients need the input (autocast: a copy per Linear)
            keep(f"{what} input", N * width * A * (len(names) if amp else 1))
        elif n and not dropout:              # LoRA A's weight gradient needs the input
            keep(f"{what} input (for LoRA A)", (n if cast else 1) * N * width * A)
        elif n:                              # each adapter drops its own copy; the mask only if needed
            keep(f"{what}: LoRA dropout outputs", n * N * width * A)
            keep(f"{what}: LoRA dropout masks", n * N * width * mask_b, input_grad)

    has = lambda *names: full or any(t in tg for t in names)
    keep("norm 1: fp32 input + 1/rms", N * (4 * H + 4), x_grad)
    keep("norm 1: normalised x (norm weight's gradient)", N * H * res, full)
    linear_inputs("q/k/v", ("q_proj", "k_proj", "v_proj"), H, x_grad)
    qkv_grad = x_grad or has("q_proj", "k_proj", "v_proj")
    keep("attention: q, k, v after rotary + logsumexp", N * ((qd + 2 * kvd) * A + 4 * nh), qkv_grad)
    keep("attention: mask", B * T * T * A, qkv_grad and padded)
    keep("attention output (= o_proj input)", N * qd * A, qkv_grad or (has("o_proj") and not dropout))
    if dropout and not full:
        linear_inputs("o_proj", ("o_proj",), qd, qkv_grad)
    elif cast and not full and "o_proj" in tg:   # autocast's own 16-bit copy for LoRA A
        keep("o_proj input (for LoRA A): autocast's copy", N * qd * A)
    h2_grad = qkv_grad or has("o_proj")
    keep("norm 2: fp32 input + 1/rms", N * (4 * H + 4), h2_grad)
    keep("norm 2: normalised x (norm weight's gradient)", N * H * res, full)
    linear_inputs("gate/up", ("gate_proj", "up_proj"), H, h2_grad)
    gate_grad, up_grad = h2_grad or has("gate_proj"), h2_grad or has("up_proj")
    keep("MLP: gate (SiLU input)", N * k * I * mlp, gate_grad)
    keep("MLP: SiLU(gate) and up (the product's inputs)",
         N * k * I * mlp * (up_grad + gate_grad))
    linear_inputs("down_proj", ("down_proj",), k * I, gate_grad or up_grad)
    if a.num_experts > 1:                    # approximate: tokens gathered per expert, outputs weighted
        keep("MoE: gathered expert inputs, weighted outputs, router", N * (2 * k * H * A + 4 * a.num_experts))
    if not full:
        active = sum(k if t in ("gate_proj", "up_proj", "down_proj") else 1 for t in tg)
        keep("LoRA A outputs (r per target)", N * r * A * active)
    return rows


def activation_rows(arch, method: str = "lora", batch_size: int = 1, seq_len: int = 512,
                    act_bytes: int = 2, gradient_checkpointing: bool = True,
                    targets="all-linear", r: int = 8, lora_dropout: float = 0.0,
                    precision: str = "amp", padded: bool = False) -> tuple[list, int]:
    """What autograd saves for one step of a Llama-style model: rows of (what, bytes), and the
    bytes of one decoder layer (recomputed during backward under gradient checkpointing).

    Per layer, per token (A = act_bytes; RMSNorm works in fp32 whatever the model's dtype):
      2 norms:   fp32 input (4H) + 1/rms (4); full FT also the normalised x (norm weight's grad)
      attention: input of q/k/v (H), q (nh hd), k, v (nkv hd each), output (nh hd, which is also
                 o_proj's input) + logsumexp (4 nh): what SDPA's flash/efficient kernels keep
      MLP:       input of gate/up (H), gate, SiLU(gate), up, gate*up (= down's input): 4 x I
      LoRA:      A's output (r) per target; a frozen Linear without an adapter keeps no input.
    With gradient checkpointing only each layer's input is kept (H per token per layer).
    """
    a = resolve_arch(arch)
    B, T, H, L, N = batch_size, seq_len, a.hidden_size, a.num_hidden_layers, batch_size * seq_len
    full = method == "full"
    amp = full and precision == "amp"
    q32 = quantization(method) is not None and act_bytes < 4
    res = 4 if amp or q32 else act_bytes
    tg = LINEAR_NAMES if full else _targets(targets)
    args = (a, B, T, act_bytes, full, amp, tg, r, lora_dropout > 0, padded)
    layer = _layer_rows(*args, x_grad=True, q32=q32)
    one_layer = sum(b for _, b in layer)
    if gradient_checkpointing:
        rows = [("layer inputs kept for recomputation", L * N * H * res)]
    else:
        first = _layer_rows(*args, x_grad=full, q32=q32)   # layer 0: is there a gradient below it?
        first = dict(first)
        rows = [(f"{what} (x {L})" if first.get(what) == b else f"{what} (x {L - 1} + layer 0)",
                 (L - 1) * b + first.get(what, 0)) for what, b in layer]
        rows.append(("rotary cos/sin", 2 * T * a.hd * res))
    if not full and act_bytes < 4 and not gradient_checkpointing:
        # autocast keeps one 16-bit copy of each fp32 adapter matrix for the backward pass
        # (under checkpointing the copies are remade during recomputation, not kept)
        # (not in layer 0 the A of q, k, v: their input needs no gradient, so A's copy is not kept)
        copies = _lora_params(a, tg, r) - r * H * sum(t in tg for t in ("q_proj", "k_proj", "v_proj"))
        rows.append(("autocast: 16-bit copies of the adapters", copies * act_bytes))
    if q32:
        rows.append(("autocast: 16-bit copy of the fp32 output head", a.vocab_size * H * act_bytes))
    if amp and act_bytes < 4:
        # autocast's cached 16-bit copies of the fp32 master weights, kept for the backward pass
        # (the head always; the layers' only without checkpointing, which recasts them)
        layers = 0 if gradient_checkpointing else param_groups(a)["linear"]
        rows.append(("autocast: 16-bit copies of the weights", (layers + a.vocab_size * H) * act_bytes))
    rows.append(("final norm: fp32 input + 1/rms", N * (4 * H + 4)))
    if full:
        rows.append(("final norm: normalised x", N * H * res))
        rows.append(("lm_head input", N * H * act_bytes))
        rows.append(("embedding: token ids", N * 8))
    rows.append(("loss: fp32 log-probabilities", N * a.vocab_size * 4))
    rows.append(("loss: targets", N * 8 + 4))
    return rows, one_layer


def _check(name, value, allowed, fix=""):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}; got {value!r}. {fix}".strip())


def estimate(arch, method: str = "lora", bits: int | None = None, r: int = 8,
             targets="all-linear", batch_size: int = 1, seq_len: int = 512,
             gradient_checkpointing: bool = True, optimizer: str = "adamw_torch",
             precision: str = "amp", act_bytes: int = 2, compute_dtype: torch.dtype | None = None,
             lora_dropout: float = 0.0, padded: bool = False) -> Estimate:
    """Predict the memory of one training step of a Llama-style model.

    arch:       a name from ARCHS, an `Arch`, or a transformers config (LlamaConfig, ...)
    method:     "full" | "lora" | "qlora"
    bits:       the frozen base: lora 16 (default) or 32; qlora 4 (default, NF4 + double
                quantization) or 8 (int8). Full fine-tuning takes its dtype from `precision`.
    precision:  full only: "amp" (fp32 master weights, 16-bit compute), "16", "32"
    act_bytes:  bytes of an activation: 2 for a GPU's bf16/fp16 (default), 4 on a CPU (fp32);
                `compute_dtype` (a torch dtype) sets it instead.
    optimizer:  a name from kit.arch.OPTIMIZERS: "adamw_torch" (m and v in the parameters'
                dtype), "adamw_8bit"/"paged_adamw_8bit" (bitsandbytes blockwise 8-bit), "sgd" (no state)
    padded:     True if batches carry a padding mask (k/v heads are then repeated for SDPA)
    """
    a = resolve_arch(arch)
    check_method(method)
    _check("precision", precision, PRECISIONS)
    _check("optimizer", optimizer, OPTIMIZERS)
    if method != "full":
        _check("bits", bits, (None, *METHODS[method].bits),
               f"For method={method!r}; a quantized base is method='qlora'.")
    check_hparams(r, 1.0, lora_dropout)             # LoRA's rules (alpha changes no memory)
    if compute_dtype is not None:
        act_bytes = torch.empty(0, dtype=compute_dtype).element_size()
    _check("act_bytes", act_bytes, (2, 4), "2 for bf16/fp16 on a GPU, 4 for fp32 on a CPU.")
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer; got {v!r}.")
    bits = bits or METHODS[method].gpu_estimate.get("bits")       # lora 16, qlora 4; full: its precision
    groups, L, shapes = param_groups(a), a.num_hidden_layers, linear_shapes(a)
    P = groups["linear"] + groups["other"]
    tensors_per_layer = sum(c for _, _, c in shapes.values()) + 2 + (a.num_experts > 1) + 4 * a.attention_bias

    quant_constants = 0
    if method == "full":
        pb = 2 if precision == "16" else 4                  # master weights, grads, Adam states
        trainable, n_tensors = P, L * tensors_per_layer + 1 + (1 if a.tie_word_embeddings else 2)
        weights = P * pb
    else:
        tg = _targets(targets)
        trainable = _lora_params(a, tg, r)
        n_tensors = 2 * L * sum(shapes[t][2] for t in tg)
        pb = 4                                              # adapters: fp32
        if method == "lora":
            weights = P * bits // 8 + trainable * 4
        else:
            weights = groups["linear"] * bits // 8 + groups["other"] * 4 + trainable * 4
            quant_constants = L * sum(_constants(i, o, bits) * c for i, o, c in shapes.values())
    gradients = trainable * pb
    state_bytes = OPTIMIZERS[optimizer].state_bytes
    state_bytes = 2 * pb if state_bytes is None else state_bytes   # None: 2 moments in the params' dtype
    opt = int(trainable * state_bytes) + (4 * n_tensors if optimizer == "adamw_torch" else 0)  # + step counters

    rows, one_layer = activation_rows(a, method, batch_size, seq_len, act_bytes,
                                      gradient_checkpointing, targets, r, lora_dropout,
                                      precision, padded)
    N = batch_size * seq_len
    workspace = N * a.vocab_size * 4 + (one_layer if gradient_checkpointing else 0)
    settings = dict(arch=a.name, method=method, bits=bits, r=r, targets=targets,
                    batch_size=batch_size, seq_len=seq_len,
                    gradient_checkpointing=gradient_checkpointing, optimizer=optimizer,
                    precision=precision, act_bytes=act_bytes, lora_dropout=lora_dropout,
                    padded=padded)
    return Estimate(weights, quant_constants, gradients, opt, sum(b for _, b in rows),
                    N * a.vocab_size * act_bytes, workspace, P, trainable, settings, rows)


def _constants(in_features: int, out_features: int, bits: int) -> int:
    """Bytes of bitsandbytes quantization constants for one Linear weight.
    4-bit (blocksize 64, double quantization): one uint8 absmax per 64 weights, one fp32 absmax
    per 256 of those, the NF4 code (16 fp32), the nested 8-bit code (256 fp32), an fp32 offset:
    4 + 8/64 + 32/16384 = 4.127 bits per weight. 8-bit: one fp32 scale per output row (SCB)."""
    n = in_features * out_features
    if bits == 8:
        return 4 * out_features
    blocks = math.ceil(n / 64)
    return blocks + 4 * math.ceil(blocks / 256) + 4 * (16 + 256 + 1)


# ---------------------------------------------------------------------------- comparing
def compare(ledger: Ledger, est: Estimate) -> list[dict]:
    """Measured vs estimated, component by component (ratio = estimate / measured)."""
    out = []
    for k in ("weights", "quant_constants", "gradients", "optimizer", "activations", "logits"):
        m, e = getattr(ledger, k), getattr(est, k)
        out.append({"component": k, "measured": m, "estimated": e,
                    "ratio": e / m if m else (1.0 if e == 0 else float("inf"))})
    return out


# ---------------------------------------------------------------------------- does it fit?
def estimate_settings(method: str, bits: int | None = None) -> dict:
    """The `estimate` settings of `method` at base width `bits` (kit.arch.METHODS[method].bits;
    None = the usual one): full 32 = fp32 master weights with 16-bit compute (AMP), full 16 =
    pure 16-bit; LoRA 16 or 32 = the frozen base's dtype; QLoRA 4 or 8 = the quantized base."""
    check_method(method)
    allowed = METHODS[method].bits
    bits = allowed[0] if bits is None else bits
    if bits not in allowed:
        raise ValueError(f"bits={bits} does not go with method={method!r}: use one of {allowed} "
                         "(full: 32 = AMP, 16 = pure 16-bit; lora: the base's dtype; qlora: the 4- or "
                         "8-bit base).")
    if method == "full":
        return {"method": "full", "precision": "amp" if bits == 32 else "16"}
    return {"method": method, "bits": bits}


def fits(est: Estimate, gpu) -> bool:
    """Does the estimate fit on `gpu` (a name in kit.arch.GPUS or a number of bytes)?"""
    return est.total <= gpu_bytes(gpu)


def largest_model_that_fits(method: str, gpu, **kwargs) -> str | None:
    """The preset with the most parameters whose estimate fits on `gpu` (None if none does)."""
    best = None
    for name in by_size():
        if fits(estimate(name, method, **kwargs), gpu):
            best = name
    return best


def gpu_fit(model="llama-2-7b", method: str = "qlora", bits: int | None = None, rank: int = 8,
            batch_size: int = 1, seq_len: int = 512, gradient_checkpointing: bool = True,
            gpu: str = "T4") -> dict:
    """Does one fine-tuning step fit on a GPU? (what notebook 06's calculator shows)

    The estimate for the settings, the GPU's usable memory (kit.arch.GPUS) and, for each method
    at its usual width (full AMP, LoRA 16-bit, QLoRA 4-bit), the largest preset of
    kit.arch.ARCHS that fits with the same rank, batch and length. model: a preset name, an
    Arch or a transformers config.
    -> {"settings", "estimate" (bytes, Estimate.as_dict()), "params", "trainable", "total_gb",
        "gpu_gb", "fits", "headroom_gb", "largest" {method: {"name", "params"}}}"""
    usable = gpu_bytes(gpu)
    common = dict(r=rank, batch_size=batch_size, seq_len=seq_len,
                  gradient_checkpointing=gradient_checkpointing)
    est = estimate(model, **common, **estimate_settings(method, bits))
    largest = {}
    for m in METHOD_NAMES:
        name = largest_model_that_fits(m, gpu, **common, **{k: v for k, v in estimate_settings(m).items()
                                                            if k != "method"})
        largest[m] = {"name": name, "params": param_count(name) if name else None}
    name = model if isinstance(model, str) else getattr(model, "name", "custom")
    bits = METHODS[method].bits[0] if bits is None else bits
    return {"settings": dict(model=name, method=method, bits=bits, rank=rank, batch_size=batch_size,
                             seq_len=seq_len, gradient_checkpointing=gradient_checkpointing, gpu=gpu),
            "estimate": est.as_dict(), "params": est.params, "trainable": est.trainable,
            "total_gb": est.total / GB, "gpu_gb": usable / GB, "fits": est.total <= usable,
            "headroom_gb": (usable - est.total) / GB, "largest": largest}


def gpu_fit_text(calc: dict) -> str:
    """`gpu_fit`'s answer in words, component by component (MB)."""
    s, e = calc["settings"], calc["estimate"]
    parts = ", ".join(f"{k.replace('_', ' ')} {e[k] / MB:,.0f} MB" for k in
                      ("weights", "quant_constants", "gradients", "optimizer", "activations", "logits", "workspace")
                      if e.get(k))
    verdict = "fits" if calc["fits"] else "does NOT fit"
    largest = "; ".join(f"{m}: {v['name'] or 'nothing'}" for m, v in calc["largest"].items())
    return (f"{s['model']} ({calc['params'] / 1e9:.2f}B), {s['method']} {s['bits']}-bit, r={s['rank']} "
            f"({calc['trainable']:,} trainable): {calc['total_gb']:.2f} GB -> {verdict} on {s['gpu']} "
            f"({calc['gpu_gb']:.0f} GB usable, headroom {calc['headroom_gb']:+.2f} GB)\n  {parts}\n"
            f"  largest preset that fits on {s['gpu']}: {largest}")
