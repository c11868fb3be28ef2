"""Training checkpoints: everything needed to carry on a run exactly where it stopped.

    checkpoints/checkpoint-000040/
        trainable.safetensors   the parameters that train (LoRA A and B, or every weight)
        optimizer.safetensors   AdamW's moments per parameter
        state.json              step, loss history, optimizer settings, gradient scaler,
                                the settings the run was started with
        rng.safetensors         random generator states (dropout), so the resumed run
                                draws what the uninterrupted one would have drawn

A checkpoint is written into a temporary folder and renamed when complete, so a run
killed while saving leaves the previous checkpoint intact; only the newest `keep` are
kept. Tensors go to safetensors and everything else to JSON: loading one runs no code
(no pickle).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

PREFIX = "checkpoint-"
# Settings that may change between an interrupted run and its resumption without
# changing what the finished steps mean (steps: train for longer; the rest: reporting).
MAY_CHANGE = {"steps", "progress", "eval_every"}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train, by name, as contiguous CPU tensors."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters()
            if p.requires_grad}


def _split_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state_dict as (tensors for safetensors, the rest for JSON)."""
    tensors, scalars = {}, {}
    for index, per_param in state_dict["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"scalars": scalars, "param_groups": state_dict["param_groups"]}


def _join_optimizer(tensors: dict[str, torch.Tensor], rest: dict, device) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value.to(device) if key != "step" else value
    for index, values in rest["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


def checkpoints(folder) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
             and p.name[len(PREFIX):].isdigit() and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def save(folder, step: int, model: nn.Module, optimizer, scaler, history: dict, settings: dict,
         keep: int = 2) -> Path:
    """Write checkpoint-<step> into `folder` (atomically) and drop all but the newest `keep`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step:06d}"
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    opt_tensors, opt_rest = _split_optimizer(optimizer.state_dict())
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    save_file(rng, str(tmp / "rng.safetensors"))
    state = {"step": step, "history": history, "settings": settings, "optimizer": opt_rest,
             "scaler": scaler.state_dict()}
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def check_settings(saved: dict, now: dict, where) -> list[str]:
    """Raise if the run's settings differ from the checkpoint's in a way that matters;
    return the names of the harmless differences (MAY_CHANGE)."""
    saved, now = _flat(saved), _flat(json.loads(json.dumps(now)))  # tuples -> lists, as saved
    differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    serious = [k for k in differ if k not in MAY_CHANGE]
    if serious:
        detail = ", ".join(f"{k}: {saved.get(k)!r} then, {now.get(k)!r} now" for k in serious)
        raise ValueError(f"The checkpoint in {str(where)!r} was made with other settings ({detail}). "
                         "Resume with the same settings, or start a fresh run: another output_dir, "
                         "or resume=false (which deletes these checkpoints).")
    return differ


def load(path, model: nn.Module, optimizer, scaler, settings: dict) -> dict:
    """Restore a checkpoint into model, optimizer and scaler; returns its state.json
    (step, history, ...) with "changed": the harmless setting changes."""
    from safetensors.torch import load_file

    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    changed = check_settings(state["settings"], settings, path)
    saved = load_file(str(path / "trainable.safetensors"))
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    misfit = sorted(k for k in set(saved) & set(params) if saved[k].shape != params[k].shape)
    if set(saved) != set(params) or misfit:
        missing, extra = sorted(set(params) - set(saved))[:3], sorted(set(saved) - set(params))[:3]
        raise ValueError(f"The checkpoint in {str(path)!r} does not fit this model (missing {missing}, "
                         f"unexpected {extra}, other shapes {misfit[:3]}): resume with the model and "
                         "method it was made with.")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name].to(p.dtype))
    device = next(iter(params.values())).device
    optimizer.load_state_dict(_join_optimizer(load_file(str(path / "optimizer.safetensors")),
                                              state["optimizer"], device))
    if state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    state["changed"] = changed
    return state
