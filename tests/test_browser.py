"""Widgets in a real client: JupyterLab in headless Chromium, driven by Playwright.

For each notebook below: prepare a copy with its smoke parameters (papermill, without
executing), open it in JupyterLab, run all cells, move one slider with the keyboard, and
check that the widget's output changed and that no cell shows a traceback.
Needs Debian's `chromium` and the PyPI `playwright` package; skipped when either is missing.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = Path(os.environ.get("KIT_NOTEBOOKS", ROOT / "notebooks"))  # override to debug
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# (notebook, description of the slider to move). Each case takes about a minute on the 2-core
# CI machine (Run All with smoke parameters); to keep the suite near 15 minutes it runs one by
# default (04's bits slider), and all four with KIT_BROWSER_ALL=1 (all four passed there: 02
# 64-73 s, 04 51-59 s, 06 83 s, 07 72 s).
CASES = [("04_quantization", "bits")]
if os.environ.get("KIT_BROWSER_ALL"):
    CASES += [("02_lora_from_scratch", "rank"), ("06_choosing_a_method", "batch"),
              ("07_scaling_out", "gpus")]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on localhost serving a folder of prepared notebooks."""
    pytest.importorskip("playwright")
    import papermill as pm

    folder = tmp_path_factory.mktemp("lab")
    for name, _ in CASES:
        src = NOTEBOOKS / f"{name}.ipynb"
        if not src.exists():
            continue
        smoke = json.loads(src.read_text())["metadata"].get("kit", {}).get("smoke", {})
        pm.execute_notebook(str(src), str(folder / src.name), prepare_only=True, kernel_name="python3",
                            parameters={**smoke, "RUN_DIR": str(folder / "run")}, progress_bar=False)
    port, token = _free_port(), "kit-browser-test"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
           "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={folder}", "--ServerApp.open_browser=False",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    # render every cell (no virtual scrolling), so far-down outputs and widgets exist in the DOM
    settings = folder / ".settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(folder / ".settings")}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("JupyterLab did not start within 60 s")
    yield base, token, folder
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def _outputs(page) -> str:
    """Everything the notebook currently shows as output: text and image sources."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('.jp-OutputArea-output'))
        .map(e => e.innerText + Array.from(e.querySelectorAll('img')).map(i => i.src.slice(-200)).join(''))
        .join('\\n')""")


@pytest.mark.slow
@pytest.mark.parametrize("name,slider", CASES)
def test_slider_redraws_and_no_cell_fails(lab, browser, name, slider):
    base, token, folder = lab
    if not (folder / f"{name}.ipynb").exists():
        pytest.fail(f"notebooks/{name}.ipynb is missing")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(f"{base}/lab/tree/{name}.ipynb?reset&token={token}")  # reset: no restored tabs
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    try:  # JupyterLab may ask which kernel to start
        page.click(".jp-Dialog button.jp-mod-accept", timeout=10_000)
    except Exception:
        pass
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle'] >> visible=true",
                           timeout=90_000)
    page.click("text=Run", timeout=30_000)                        # the Run menu
    page.click("li.lm-Menu-item:has-text('Run All Cells')")
    # done when every code cell shows an execution count ("[7]:", not "[ ]:" or "[*]:")
    try:
        _wait_all_ran(page)
    finally:
        page.screenshot(path=str(folder / f"{name}-ran.png"), full_page=False)  # for diagnosis
    handle = page.locator(f".widget-slider:has(.widget-label:text-is('{slider}')) .noUi-handle").first
    handle.wait_for(timeout=30_000)
    _move_and_check(page, handle, slider, folder, name)


def _wait_all_ran(page):
    page.wait_for_function("""() => {
        const p = Array.from(document.querySelectorAll(
            '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputArea-prompt'));
        return p.length > 0 && p.every(e => /\\[\\d+\\]/.test(e.innerText));
    }""", timeout=300_000, polling=1000)


def _move_and_check(page, handle, slider, folder, name):
    handle.scroll_into_view_if_needed()
    before = _outputs(page)
    handle.focus()
    for _ in range(2):
        page.keyboard.press("ArrowRight")
    deadline = time.time() + 60
    while _outputs(page) == before and time.time() < deadline:
        time.sleep(0.5)
    after = _outputs(page)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=False)
    assert after != before, f"moving the {slider!r} slider changed nothing in {name}"
    assert "Traceback" not in after, after[after.find("Traceback") - 500:][:2000]
    page.close()
