"""The shape of the kit (issue 23): every module in a layer folder of the import-linter contract,
short modules and functions, each method's facts in one place, no import cycle through the
solutions."""
import ast
import re
import tomllib
from pathlib import Path

import pytest

from kit import arch

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "kit"
SOURCES = sorted(KIT.rglob("*.py"))
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 300, 60
TAUGHT_LOOP = ("kit/engine/train/loop.py", "finetune")   # read top to bottom in lesson 01: one piece


def kit_modules() -> list[str]:
    """Every module and package of the kit, from its files (nothing imported)."""
    names = []
    for path in SOURCES:
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(set(names) - {"kit"})


def top_layers() -> list[str]:
    """The modules and packages named in the first contract's layers ("a | b" split)."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    return [name.strip() for layer in contracts[0]["layers"] for name in layer.split("|")]


def test_every_kit_module_is_in_a_layer():
    layers = top_layers()
    outside = [m for m in kit_modules() if not any(m == layer or m.startswith(layer + ".") for layer in layers)]
    assert outside == [], f"modules in no layer of pyproject.toml's contract: {outside}"
    assert len(kit_modules()) > 40            # the walk found the package, not nothing


def test_each_layer_folder_holds_modules():
    for layer in top_layers():
        path = ROOT / layer.replace(".", "/")
        assert path.is_dir() or path.with_suffix(".py").is_file(), layer


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(KIT)))
def test_modules_and_functions_are_short(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)}: over {MAX_MODULE_LINES} lines"
    rel = str(path.relative_to(ROOT))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (rel, node.name) != TAUGHT_LOOP:
            lines = node.end_lineno - node.lineno + 1
            assert lines <= MAX_FUNCTION_LINES, f"{rel}: {node.name} is {lines} lines"


def test_the_size_rules_can_fail():
    long = "def f():\n" + "    x = 1\n" * (MAX_FUNCTION_LINES + 1)
    node = ast.parse(long).body[0]
    assert node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES


def test_a_methods_facts_are_read_from_the_method_table():
    """Whether a method quantizes its base is kit.arch's table (kit.arch.quantization); no module
    re-derives it from the method's name."""
    pattern = re.compile(r'"nf4" if|method == "qlora"|method != "qlora"|== "qlora" else')
    found = [f"{p.relative_to(ROOT)}:{i}" for p in SOURCES if p != KIT / "arch.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []
    assert arch.quantization("qlora") == "nf4" and arch.quantization("lora") is None


def test_the_solutions_import_nothing_that_imports_them():
    """kit.view.check runs solutions/<notebook>.py; a solution importing kit.view.check would
    close a cycle."""
    for path in sorted((ROOT / "solutions").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("kit.view.check"), path.name
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("kit.view.check") for a in node.names), path.name
