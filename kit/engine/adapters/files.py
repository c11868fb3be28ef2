"""Adapters on disk and on a base: saved as safetensors, loaded (several on one base), switched,
switched off; a whole model saved.
"""
from __future__ import annotations

from pathlib import Path

import torch

from kit.files import read_json, read_tensors

ADAPTER_FILE = "adapter_model.safetensors"


def _require_peft(model, what: str):
    from peft import PeftModel  # slow to import (about 4 s): only when needed
    if not isinstance(model, PeftModel):
        raise ValueError(f"{what} needs a model with peft adapters (method='lora' or 'qlora'); got "
                         f"{type(model).__name__}. For full fine-tuning use save_full(model, path).")


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def adapter_names(model) -> list[str]:
    """Names of the adapters loaded on a peft model."""
    _require_peft(model, "adapter_names")
    return list(model.peft_config)


# ---------------------------------------------------------------------------- save / load
def save_adapter(model, path, allow_untrained: bool = False) -> dict:
    """Save the active adapter as safetensors and check the file reloads non-empty.

    Returns {"path", "files" {name: bytes}, "bytes", "mb", "tensors", "parameters"};
    "path" is the folder to pass to load_adapter (peft puts an adapter not named
    "default" in a sub-folder of that name). Refuses an adapter with no tensors, and one
    whose lora_B are all zero (untrained: it changes nothing) unless allow_untrained=True.
    """
    from peft import get_peft_model_state_dict  # slow to import (about 4 s): only when needed

    _require_peft(model, "save_adapter")
    name = model.active_adapter
    state = get_peft_model_state_dict(model, adapter_name=name)
    if not state:
        raise ValueError(f"Adapter {name!r} has no tensors to save: was it created with "
                         "prepare_model(..., method='lora') and trained?")
    b_mats = [t for k, t in state.items() if "lora_B" in k]
    if b_mats and all(not t.any() for t in b_mats) and not allow_untrained:
        raise ValueError(f"Every lora_B of adapter {name!r} is zero, so it changes nothing (untrained). "
                         "Train it first (finetune), or pass allow_untrained=True to save it anyway.")

    path = Path(path)
    model.save_pretrained(str(path), safe_serialization=True, selected_adapters=[name])
    folder = path if name == "default" else path / name
    saved = read_tensors(folder / ADAPTER_FILE, "adapter")  # the trap: files that save "fine" but empty
    if len(saved) != len(state) or sum(t.numel() for t in saved.values()) == 0:
        raise RuntimeError(f"{folder / ADAPTER_FILE} reloads with {len(saved)} tensors, expected "
                           f"{len(state)}: the adapter was not saved correctly.")
    size = (folder / ADAPTER_FILE).stat().st_size
    return {"path": str(folder), "adapter": name, "files": _files(folder), "bytes": size,
            "mb": size / 1e6, "tensors": len(saved), "parameters": sum(t.numel() for t in saved.values())}


def load_adapter(base_model, path, adapter_name: str = "default", is_trainable: bool = False):
    """Put the adapter saved in `path` on `base_model`; returns the peft model.

    base_model may be a plain model (a new peft model wraps it) or a peft model that
    already has adapters (this one is added under `adapter_name`; use set_adapter to
    switch). is_trainable=True to keep training it with finetune(). A truncated or corrupt
    adapter file raises kit.files.DamagedFileError naming it, before peft reads it
    (base_model is then left as it was).
    """
    from peft import PeftModel, get_peft_model_state_dict  # slow to import (about 4 s): only when needed

    path = Path(path)
    if not (path / "adapter_config.json").exists() or not (path / ADAPTER_FILE).exists():
        raise ValueError(f"path {str(path)!r} holds no saved adapter (adapter_config.json and "
                         f"{ADAPTER_FILE}); pass the folder save_adapter returned as 'path'.")
    read_json(path / "adapter_config.json", "adapter", {"peft_type": str})
    saved = read_tensors(path / ADAPTER_FILE, "adapter")  # checked here: peft's errors are cryptic
    if isinstance(base_model, PeftModel):
        if adapter_name in base_model.peft_config:
            raise ValueError(f"adapter_name {adapter_name!r} is already loaded "
                             f"({adapter_names(base_model)}); choose another name.")
        base_model.load_adapter(str(path), adapter_name=adapter_name, is_trainable=is_trainable)
        model = base_model
    else:
        model = PeftModel.from_pretrained(base_model, str(path), adapter_name=adapter_name,
                                          is_trainable=is_trainable)
    # Check every saved tensor landed in the model (a key mismatch would load nothing, silently).
    loaded = get_peft_model_state_dict(model, adapter_name=adapter_name)
    if set(saved) != set(loaded) or any(not torch.equal(saved[k], loaded[k].cpu().to(saved[k].dtype))
                                        for k in saved):
        raise RuntimeError(f"The adapter in {str(path)!r} does not match this base model's layers; "
                           "load it on the model it was trained on.")
    model.eval()
    return model


def save_full(model, path, tokenizer=None) -> dict:
    """Save a fully fine-tuned (or merged) model as safetensors; returns file sizes."""
    from peft import PeftModel  # slow to import (about 4 s): only when needed
    if isinstance(model, PeftModel):
        raise ValueError("save_full got a model with adapters: use save_adapter(model, path) for "
                         "the adapter alone (MBs), or merge(model).model then save_full.")
    path = Path(path)
    model.save_pretrained(str(path), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    files = _files(path)
    weights = sum(size for name, size in files.items() if name.endswith(".safetensors"))
    return {"path": str(path), "files": files, "bytes": weights, "mb": weights / 1e6}


# ---------------------------------------------------------------------------- several adapters
def set_adapter(model, name: str) -> None:
    """Make adapter `name` the one that runs (peft's PeftModel.set_adapter)."""
    _require_peft(model, "set_adapter")
    if name not in model.peft_config:
        raise ValueError(f"name must be one of the loaded adapters {adapter_names(model)}; got {name!r}. "
                         "Load it first with load_adapter(model, path, adapter_name=name).")
    model.set_adapter(name)


def disable_adapter(model):
    """Context manager: inside it the model computes as the base model, exactly.

        with disable_adapter(model):
            base_logits = model(**batch).logits
    """
    _require_peft(model, "disable_adapter")
    return model.disable_adapter()
