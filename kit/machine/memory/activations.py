"""What autograd keeps for the backward pass, per decoder layer, computed from the shapes:
the estimator's activation rows (on the bundled model they equal the ledger's, to the byte).
"""
from __future__ import annotations

from kit.arch import (LINEAR_NAMES, Arch, check_target_names, linear_shapes, param_groups, quantization,
                      resolve_arch)


# ---------------------------------------------------------------------------- estimating
def _lora_params(a: Arch, tg: tuple, r: int) -> int:
    """Numbers in the adapters: r x (in + out) per targeted Linear, every layer."""
    shapes = linear_shapes(a)
    return a.num_hidden_layers * sum(r * (shapes[t][0] + shapes[t][1]) * shapes[t][2] for t in tg)


def _targets(targets) -> tuple[str, ...]:
    return check_target_names(targets, LINEAR_NAMES)


class _Saved(list):
    """The rows (what, bytes) of one layer's saved tensors, and the two rules that add them."""

    def __init__(self, N: int, A: int, full: bool, amp: bool, tg: tuple, dropout: bool):
        super().__init__()
        self.N, self.A, self.full, self.amp, self.tg, self.dropout = N, A, full, amp, tg, dropout
        self.cast = A < 4                   # autocast casts each LoRA A's input separately
        self.mask_b = A if A == 4 else 1    # dropout mask: float on a CPU, bool on a GPU

    def keep(self, what: str, nbytes: int, when: bool = True) -> None:
        if when and nbytes:
            self.append((what, nbytes))

    def has(self, *names) -> bool:
        return self.full or any(t in self.tg for t in names)

    def linear_inputs(self, what: str, names: tuple, width: int, input_grad: bool) -> None:
        """The input shared by the Linears `names` (width features, per token)."""
        N, A, n = self.N, self.A, sum(t in self.tg for t in names)
        if self.full:                        # weight gradients need the input (autocast: a copy per Linear)
            self.keep(f"{what} input", N * width * A * (len(names) if self.amp else 1))
        elif n and not self.dropout:         # LoRA A's weight gradient needs the input
            self.keep(f"{what} input (for LoRA A)", (n if self.cast else 1) * N * width * A)
        elif n:                              # each adapter drops its own copy; the mask only if needed
            self.keep(f"{what}: LoRA dropout outputs", n * N * width * A)
            self.keep(f"{what}: LoRA dropout masks", n * N * width * self.mask_b, input_grad)


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
    rows = _Saved(B * T, A, full, amp, tg, dropout)
    res = 4 if amp or q32 else A            # residual stream: fp32 under autocast
    h2_grad = _attention_rows(rows, a, B, T, padded, x_grad, res)
    _mlp_rows(rows, a, h2_grad, res, 4 if q32 else A)   # MLP tensors: fp32 behind a 4-bit Linear in QLoRA
    if not full:
        active = sum(a.experts_per_token if t in ("gate_proj", "up_proj", "down_proj") else 1 for t in tg)
        rows.keep("LoRA A outputs (r per target)", B * T * r * A * active)
    return list(rows)


def _attention_rows(rows: _Saved, a: Arch, B: int, T: int, padded: bool, x_grad: bool, res: int) -> bool:
    """The first half of a layer: norm, q/k/v, attention, o_proj. -> does the second half's input
    need a gradient?"""
    N, A, H, nh = rows.N, rows.A, a.hidden_size, a.num_attention_heads
    qd, kvd = nh * a.hd, (nh if padded else a.num_key_value_heads) * a.hd
    rows.keep("norm 1: fp32 input + 1/rms", N * (4 * H + 4), x_grad)
    rows.keep("norm 1: normalised x (norm weight's gradient)", N * H * res, rows.full)
    rows.linear_inputs("q/k/v", ("q_proj", "k_proj", "v_proj"), H, x_grad)
    qkv_grad = x_grad or rows.has("q_proj", "k_proj", "v_proj")
    rows.keep("attention: q, k, v after rotary + logsumexp", N * ((qd + 2 * kvd) * A + 4 * nh), qkv_grad)
    rows.keep("attention: mask", B * T * T * A, qkv_grad and padded)
    rows.keep("attention output (= o_proj input)", N * qd * A, qkv_grad or (rows.has("o_proj") and not rows.dropout))
    if rows.dropout and not rows.full:
        rows.linear_inputs("o_proj", ("o_proj",), qd, qkv_grad)
    elif rows.cast and not rows.full and "o_proj" in rows.tg:   # autocast's own 16-bit copy for LoRA A
        rows.keep("o_proj input (for LoRA A): autocast's copy", N * qd * A)
    return qkv_grad or rows.has("o_proj")


def _mlp_rows(rows: _Saved, a: Arch, h2_grad: bool, res: int, mlp: int) -> None:
    """The second half of a layer: norm, gate/up, SiLU, down_proj (and a mixture's router)."""
    N, A, H, I, k = rows.N, rows.A, a.hidden_size, a.intermediate_size, a.experts_per_token
    rows.keep("norm 2: fp32 input + 1/rms", N * (4 * H + 4), h2_grad)
    rows.keep("norm 2: normalised x (norm weight's gradient)", N * H * res, rows.full)
    rows.linear_inputs("gate/up", ("gate_proj", "up_proj"), H, h2_grad)
    gate_grad, up_grad = h2_grad or rows.has("gate_proj"), h2_grad or rows.has("up_proj")
    rows.keep("MLP: gate (SiLU input)", N * k * I * mlp, gate_grad)
    rows.keep("MLP: SiLU(gate) and up (the product's inputs)", N * k * I * mlp * (up_grad + gate_grad))
    rows.linear_inputs("down_proj", ("down_proj",), k * I, gate_grad or up_grad)
    if a.num_experts > 1:                    # approximate: tokens gathered per expert, outputs weighted
        rows.keep("MoE: gathered expert inputs, weighted outputs, router", N * (2 * k * H * A + 4 * a.num_experts))


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
