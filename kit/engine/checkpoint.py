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

Files still get damaged after they are written: a copy that stopped early, a full disk, a
sync tool. Every safetensors file the kit reads goes through `read_tensors` (or
`check_tensors`, the header only), which turns a missing, truncated or corrupt file into
one `DamagedFileError` naming the file and the fix. `resume` skips a damaged checkpoint
(with a warning), resumes from the newest intact one and renames the damaged one to
damaged-checkpoint-000040, so that pruning never counts it and never deletes an intact one.

A safetensors file is: 8 bytes (little-endian) giving the header length N, N bytes of JSON
header (name -> dtype, shape, data_offsets), then the tensors' bytes.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from kit.files import DamagedFileError, damaged, read_json, read_tensors, write_json

PREFIX = "checkpoint-"
DAMAGED = "damaged-"  # a damaged checkpoint is renamed damaged-checkpoint-000040
# Every setting of a resumed run must match its checkpoint's, but for those the caller names
# `may_change`: the settings that do not change what the finished steps mean (its knob table
# marks them: kit.engine.train.RESUMABLE, kit.commands.recipe.MAY_CHANGE).
# What state.json must hold ("a.b": key b inside a) and of which type.
STATE_FIELDS = {"step": int, "history": dict, "history.steps": list, "history.evals": list,
                "settings": dict, "optimizer": dict, "optimizer.scalars": dict,
                "optimizer.param_groups": list, "scaler": dict}


# ---------------------------------------------------------------------------- saving
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
    write_json(tmp / "state.json", state)
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


def check_settings(saved: dict, now: dict, where, may_change=frozenset()) -> list[str]:
    """Raise if the run's settings differ from the checkpoint's in a setting not in
    `may_change`; return the names of the harmless differences."""
    saved, now = _flat(saved), _flat(json.loads(json.dumps(now)))  # tuples -> lists, as saved
    differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    serious = [k for k in differ if k not in may_change]
    if serious:
        detail = ", ".join(f"{k}: {saved.get(k)!r} then, {now.get(k)!r} now" for k in serious)
        raise ValueError(f"The checkpoint in {str(where)!r} was made with other settings ({detail}). "
                         "Resume with the same settings, or start a fresh run: another output_dir, "
                         "or resume=false (which deletes these checkpoints).")
    return differ


# ---------------------------------------------------------------------------- loading
@dataclass
class Saved:
    """A checkpoint read into memory (see `read`); nothing of it is in a model yet."""
    path: Path
    state: dict                           # state.json
    trainable: dict[str, torch.Tensor]    # trainable.safetensors
    optimizer: dict[str, torch.Tensor]    # optimizer.safetensors
    rng: dict[str, torch.Tensor]          # rng.safetensors


def read(path) -> Saved:
    """Read every file of the checkpoint in `path` and check it; changes nothing.
    A missing, truncated or corrupt file (or state.json without its fields) raises
    DamagedFileError naming it, before any tensor reaches a model."""
    path = Path(path)
    state = read_json(path / "state.json", "checkpoint", STATE_FIELDS)
    trainable, optimizer, rng = (read_tensors(path / f"{name}.safetensors", "checkpoint")
                                 for name in ("trainable", "optimizer", "rng"))
    if "cpu" not in rng or rng["cpu"].shape != torch.get_rng_state().shape:
        raise damaged(path / "rng.safetensors", "it holds no CPU random state", "checkpoint")
    return Saved(path, state, trainable, optimizer, rng)


def restore(saved: Saved, model: nn.Module, optimizer, scaler, settings: dict, may_change=frozenset()) -> dict:
    """Put a checkpoint read by `read` into model, optimizer and scaler; returns its
    state.json (step, history, ...) with "changed": the harmless setting changes.
    Raises ValueError, changing nothing, if it was made with other settings or for
    another model."""
    path, state = saved.path, saved.state
    changed = check_settings(state["settings"], settings, path, may_change)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    tensors = saved.trainable
    misfit = sorted(k for k in set(tensors) & set(params) if tensors[k].shape != params[k].shape)
    if set(tensors) != set(params) or misfit:
        missing, extra = sorted(set(params) - set(tensors))[:3], sorted(set(tensors) - set(params))[:3]
        raise ValueError(f"The checkpoint in {str(path)!r} does not fit this model (missing {missing}, "
                         f"unexpected {extra}, other shapes {misfit[:3]}): resume with the model and "
                         "method it was made with.")
    device = next(iter(params.values())).device
    # The optimizer first: load_state_dict checks that the state fits before it changes anything.
    optimizer.load_state_dict(_join_optimizer(saved.optimizer, state["optimizer"], device))
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name].to(p.dtype))
    if state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(saved.rng["cpu"])
    cuda = [saved.rng[k] for k in sorted(saved.rng) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    return state | {"changed": changed}


def load(path, model: nn.Module, optimizer, scaler, settings: dict, may_change=frozenset()) -> dict:
    """Restore the checkpoint in `path` into model, optimizer and scaler (read, then
    restore); returns its state.json (step, history, ...) with "changed": the harmless
    setting changes. DamagedFileError for a damaged checkpoint, ValueError for one made
    with other settings or for another model; either way the model is left as it was."""
    return restore(read(path), model, optimizer, scaler, settings, may_change)


def _set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to damaged-<name> (checkpoints() no longer lists it, so
    pruning never counts it); returns the new path."""
    target, n = path.with_name(DAMAGED + path.name), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{DAMAGED}{path.name}-{n}")
    try:
        os.replace(path, target)
    except FileNotFoundError:  # with several processes resuming, another one moved it first
        pass
    return target


def resume(folder, model: nn.Module, optimizer, scaler, settings: dict, may_change=frozenset()) -> dict | None:
    """Restore the newest intact checkpoint in `folder` (see `load`); returns its state
    with "path", or None when there is no checkpoint.

    Checkpoints are tried newest first. A damaged one is skipped with a warning and, once
    an older one is restored, renamed to damaged-checkpoint-<step> (kept for a look;
    delete it when done). Other settings or another model (ValueError) are not damage:
    they propagate and nothing is renamed. If every checkpoint is damaged, DamagedFileError
    names them all (the run does not silently start again from step 0)."""
    found = checkpoints(folder) if folder else []
    damaged: list[tuple[Path, DamagedFileError]] = []
    for path in reversed(found):
        try:
            saved = read(path)
        except DamagedFileError as e:
            damaged.append((path, e))
            continue
        state = restore(saved, model, optimizer, scaler, settings, may_change) | {"path": str(path)}
        for bad, error in damaged:
            moved = _set_aside(bad)
            warnings.warn(f"Checkpoint {str(bad)!r} is damaged ({Path(error.path).name}: {error.reason}); "
                          f"the run resumes from the older {path.name} instead. The damaged one was "
                          f"renamed {moved.name}: look at it, then delete it.", stacklevel=2)
        return state
    if damaged:
        detail = "; ".join(f"{bad.name} ({Path(e.path).name}: {e.reason})" for bad, e in damaged)
        raise DamagedFileError(
            f"Every checkpoint in {str(folder)!r} is damaged, so there is none to resume from: "
            f"{detail}. Delete the folder (python -m kit finetune: --resume false) to start the run "
            "again from step 0, or put an intact copy of a checkpoint back.", Path(folder), detail)
    return None
