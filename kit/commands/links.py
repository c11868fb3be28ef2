"""The repository's public URL lives in one place: pyproject.toml, [project.urls] Repository.

The Colab cell of every notebook and the README's "Open in Colab" badges derive from it;
`python -m kit sync-links` rewrites them after the URL changes, and a test checks they agree.
"""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from kit.files import REPO_ROOT

COLAB_LINE = re.compile(r'^REPO_URL = ".*?"', re.M)
BADGE = re.compile(r"https://colab\.research\.google\.com/github/[^/\s)]+/[^/\s)]+/blob/main/")


def repo_url() -> str:
    data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return data["project"]["urls"]["Repository"].rstrip("/")


def colab_prefix(url: str | None = None) -> str:
    """'https://colab.research.google.com/github/OWNER/NAME/blob/main/' for the repo URL."""
    owner_name = (url or repo_url()).removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{owner_name}/blob/main/"


def _expected_notebook(text: str, url: str) -> str:
    nb = json.loads(text)
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if COLAB_LINE.search(src):
            new = COLAB_LINE.sub(f'REPO_URL = "{url}"', src)
            cell["source"] = new.splitlines(keepends=True)
            break
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def out_of_sync() -> list[Path]:
    """Files whose Colab links do not derive from pyproject's URL."""
    url, bad = repo_url(), []
    for path in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        src = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"][:2])
        found = COLAB_LINE.search(src)
        if not found or found.group(0) != f'REPO_URL = "{url}"':
            bad.append(path)
    for path in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "lessons").glob("*.md"))]:
        if path.exists() and any(m != colab_prefix(url) for m in BADGE.findall(path.read_text())):
            bad.append(path)
    return bad


def sync() -> list[Path]:
    url, changed = repo_url(), []
    for path in out_of_sync():
        text = path.read_text()
        new = _expected_notebook(text, url) if path.suffix == ".ipynb" else BADGE.sub(colab_prefix(url), text)
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed
