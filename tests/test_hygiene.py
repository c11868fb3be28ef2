"""Notebook hygiene: no outputs, one parameters cell, a lesson for each, links resolve."""
import ast
import json
import re
from pathlib import Path

import pytest

from kit.commands.links import out_of_sync

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def cells(path):
    return json.loads(path.read_text())["cells"]


def lesson_for(path):
    number = path.name[:2]
    found = sorted((ROOT / "lessons").glob(f"{number}-*.md"))
    return found[0] if found else None


def test_there_are_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS][:1] == ["00"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    for c in cells(path):
        if c["cell_type"] == "code":
            assert not c.get("outputs") and c.get("execution_count") is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_exactly_one_parameters_cell_of_upper_case_defaults(path):
    tagged = [c for c in cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"
    tree = ast.parse("".join(tagged[0]["source"]))
    names = []
    for node in tree.body:
        assert isinstance(node, ast.Assign), f"{path.name}: parameters cell holds only assignments"
        names += [t.id for t in node.targets]
    assert "RUN_DIR" in names
    assert all(n.isupper() for n in names), names
    smoke = json.loads(path.read_text())["metadata"].get("kit", {}).get("smoke", {})
    assert set(smoke) <= set(names), f"smoke parameters not in the parameters cell: {set(smoke) - set(names)}"
    assert path.stem in "".join("".join(c["source"]) for c in cells(path)[-2:]), \
        "the last cells record results under the notebook's name"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_has_a_lesson_and_they_link_each_other(path):
    lesson = lesson_for(path)
    assert lesson is not None, f"no lessons/{path.name[:2]}-*.md for {path.name}"
    nb_text = "".join("".join(c["source"]) for c in cells(path) if c["cell_type"] == "markdown")
    assert f"../lessons/{lesson.name}" in nb_text
    assert f"../notebooks/{path.name}" in lesson.read_text()


@pytest.mark.parametrize("path", NOTEBOOKS + sorted((ROOT / "lessons").glob("*.md")) + [ROOT / "README.md"],
                         ids=lambda p: p.name)
def test_relative_links_resolve(path):
    if path.suffix == ".ipynb":
        text = "".join("".join(c["source"]) for c in cells(path) if c["cell_type"] == "markdown")
    else:
        text = path.read_text()
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


def test_colab_links_derive_from_the_one_repository_url():
    assert out_of_sync() == []


def test_first_cell_installs_only_in_colab():
    for path in NOTEBOOKS:
        first_code = next(c for c in cells(path) if c["cell_type"] == "code")
        src = "".join(first_code["source"])
        assert 'if "google.colab" in sys.modules' in src and "REPO_URL" in src, path.name


def test_the_kit_keeps_its_layers():
    """The import-linter contract in pyproject.toml: no module imports one of a higher layer."""
    import subprocess
    import sys
    from pathlib import Path as P

    lint = P(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and " kept, 0 broken" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]
