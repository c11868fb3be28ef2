"""Knob values from a YAML file or the command line, typed and checked by one parser.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib

from kit.commands.recipe.knobs import KNOBS, SECTIONS
from kit.engine.train import check_value
from kit.errors import UserError


class RecipeError(UserError):
    """A recipe or an override that cannot run; the message says how to fix it."""


# ---------------------------------------------------------------------------- values
def closest(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def _typed(spec: dataclasses.Field, value):
    """A knob's value from YAML or the command line (text), typed by the knob's field."""
    kind, text = spec.type, isinstance(value, str)
    if text and (value.strip().lower() in ("null", "~") or (value.strip().lower() == "none" and "None" in kind)):
        return None
    if not text:
        return value
    value = value.strip()
    if kind == "bool":
        lowered = value.lower()
        return lowered in ("true", "yes", "on", "1") if lowered in (
            "true", "yes", "on", "1", "false", "no", "off", "0") else value
    if kind.startswith("int"):
        return int(value) if value.lstrip("+-").isdigit() else value
    if kind.startswith("float"):
        try:
            return float(value)  # YAML reads 2e-4 as a string
        except ValueError:
            return value
    if spec.name == "lora_target_modules":
        items = [t.strip() for t in value.strip("[] ").split(",") if t.strip()]
        return "all-linear" if items == ["all-linear"] else items
    return value


def coerce(name: str, value, where: str = "recipe"):
    """Check `value` for knob `name` (from YAML or a --knob value string); return it typed."""
    if name not in KNOBS:
        raise RecipeError(f"Unknown knob '{name}' ({where}).{closest(name, KNOBS)} "
                          f"Valid knobs: {', '.join(KNOBS)}.")
    spec = KNOBS[name]
    out = _typed(spec, value)
    if out is None and "None" not in spec.type:
        raise RecipeError(f"{name} needs a value ({where}); it cannot be null. Default: {spec.default!r}.")
    if spec.type == "str" and not (isinstance(out, str) and out):
        raise RecipeError(f"{name} must be a text value; got {value!r} ({where}).")
    if name == "lora_target_modules" and not (out == "all-linear" or (
            isinstance(out, list) and out and all(isinstance(t, str) for t in out))):
        raise RecipeError(f"{name} must be all-linear or a list of layer names such as [q_proj, v_proj]; "
                          f"got {value!r} ({where}).")
    try:
        check_value(name, out, spec)
    except ValueError as e:
        hint = closest(out, spec.metadata["choices"]) if spec.metadata.get("choices") else ""
        raise RecipeError(f"{str(e).rstrip('.')} ({where}).{hint}") from None
    return out


# ---------------------------------------------------------------------------- the command line
class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise RecipeError(f"{message}. Example: --max_steps 100 --lora_r 16.")


def argument_parser() -> argparse.ArgumentParser:
    """`--config` and one `--knob` per knob (dashes or underscores), help from the knob's
    field; values stay text here and are typed and checked by `coerce`."""
    parser = _Parser(prog="python -m kit finetune", allow_abbrev=False,
                     description="Train from a recipe (kit/recipes/*.yaml or your own file); any knob "
                                 "can be overridden on the command line. An error in the recipe or "
                                 "the data is one line; --debug shows its traceback.")
    parser.add_argument("--config", help="a recipe file, or a name from kit/recipes/ (cpu-lora, ...)")
    for heading, names in SECTIONS.items():
        group = parser.add_argument_group(heading)
        for name in names:
            spec = KNOBS[name]
            flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
            group.add_argument(*flags, dest=name, default=argparse.SUPPRESS, metavar="VALUE",
                               help=f"{spec.metadata['help']} (default: {spec.default})".replace("%", "%%"))
    return parser


def parse_args(args: list[str]) -> tuple[str | None, dict[str, str]]:
    """['--config', 'cpu-lora', '--max_steps', '10', '--lora-r=4'] -> ('cpu-lora',
    {'max_steps': '10', 'lora_r': '4'}): the recipe and the knobs overridden (as text)."""
    known, rest = argument_parser().parse_known_args(args)
    for arg in rest:
        if arg.startswith("--"):
            name = arg[2:].partition("=")[0].replace("-", "_")
            raise RecipeError(f"Unknown knob '{name}' (--{name}).{closest(name, KNOBS)} "
                              "python -m kit finetune --help lists every knob.")
        raise RecipeError(f"Expected --knob value, got {arg!r}. Example: --max_steps 100 --lora_r 16.")
    overrides = vars(known)
    return overrides.pop("config", None), overrides
