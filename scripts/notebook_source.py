"""Write a notebook from a percent-format script, or the other way round.

    python scripts/notebook_source.py to-ipynb notebooks/src.py notebooks/NN_name.ipynb
    python scripts/notebook_source.py to-py notebooks/NN_name.ipynb /tmp/NN_name.py

Percent format: cells start with `# %%` (code), `# %% [markdown]` (markdown, each line
prefixed by `# `), or `# %% tags=["parameters"]`. A line `# kit-smoke: {...}` (JSON)
anywhere sets the notebook's smoke parameters (metadata kit.smoke), which the runner's
--quick and the tests use. Notebooks are written without outputs.
"""
import json
import re
import sys

KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def to_ipynb(src: str) -> dict:
    cells, smoke = [], {}
    for chunk in re.split(r"^# %%", src, flags=re.M)[1:]:
        header, _, body = chunk.partition("\n")
        lines = body.rstrip("\n").split("\n")
        kept = []
        for line in lines:
            if line.startswith("# kit-smoke:"):
                smoke = json.loads(line.split(":", 1)[1])
            else:
                kept.append(line)
        if "[markdown]" in header:
            text = "\n".join(l[2:] if l.startswith("# ") else l.lstrip("#") for l in kept)
            cells.append({"cell_type": "markdown", "metadata": {}, "source": _lines(text)})
        else:
            tags = json.loads(m.group(1)) if (m := re.search(r"tags=(\[.*?\])", header)) else []
            meta = {"tags": tags} if tags else {}
            cells.append({"cell_type": "code", "execution_count": None, "metadata": meta,
                          "outputs": [], "source": _lines("\n".join(kept).strip("\n"))})
    meta = {"kernelspec": KERNEL, "language_info": {"name": "python"}}
    if smoke:
        meta["kit"] = {"smoke": smoke}
    return {"cells": cells, "metadata": meta, "nbformat": 4, "nbformat_minor": 5}


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def to_py(nb: dict) -> str:
    out = []
    smoke = nb.get("metadata", {}).get("kit", {}).get("smoke")
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            out.append("# %% [markdown]\n" + "\n".join("# " + l if l else "#" for l in src.split("\n")))
        else:
            tags = cell.get("metadata", {}).get("tags")
            head = f"# %% tags={json.dumps(tags)}" if tags else "# %%"
            if tags and "parameters" in tags and smoke:
                src += f"\n# kit-smoke: {json.dumps(smoke)}"
            out.append(head + "\n" + src)
    return "\n\n".join(out) + "\n"


if __name__ == "__main__":
    mode, src, dst = sys.argv[1:4]
    if mode == "to-ipynb":
        nb = to_ipynb(open(src).read())
        for i, c in enumerate(nb["cells"]):
            c["id"] = f"cell-{i:02d}"
        open(dst, "w").write(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    elif mode == "to-py":
        open(dst, "w").write(to_py(json.load(open(src))))
    else:
        sys.exit(__doc__)
