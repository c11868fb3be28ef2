"""The main job runner: order, progress, failures reported with their cell, the report."""
import json

import pytest

from kit.commands import runner
from kit.view.notebook import record


def _notebook(path, cells):
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}",
                     "metadata": {"tags": ["parameters"]} if i == 0 else {},
                     "outputs": [], "source": src} for i, src in enumerate(cells)],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                       "kit": {"smoke": {"STEPS": 1}}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))
    return path


@pytest.mark.notebook
def test_runner_reports_failures_with_their_cell_and_goes_on(tmp_path, monkeypatch, capsys):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    rec = "from kit.view.notebook import record\nrecord(NAME, {'steps': STEPS, 'overview_row': {'method': NAME, 'step_time_s': 1.5}}, RUN_DIR)"
    _notebook(nbs / "01_good.ipynb", ["RUN_DIR = ''\nSTEPS = 10\nNAME = '01_good'", rec])
    _notebook(nbs / "02_bad.ipynb", ["RUN_DIR = ''\nSTEPS = 10", "import os\nos.write(2, b'kernel noise')",
                                     "raise ValueError('boom')"])
    _notebook(nbs / "03_after.ipynb", ["RUN_DIR = ''\nSTEPS = 10\nNAME = '03_after'", rec])
    monkeypatch.setattr(runner, "NOTEBOOKS", nbs)
    summary = runner.run(quick=True, folder=tmp_path / "run")
    out = capsys.readouterr().out
    assert [o.name for o in summary.outcomes] == ["01_good", "02_bad", "03_after"]
    assert not summary.ok
    bad = summary.outcomes[1]
    assert bad.cell == 3 and "boom" in bad.error
    assert "[2/3] 02_bad ... FAILED at cell 3" in out
    assert (tmp_path / "run" / "02_bad.ipynb").exists()          # partial output kept
    assert "kernel log in" in out and "kernel noise" not in out + capsys.readouterr().err
    assert "kernel noise" in (tmp_path / "run" / "logs" / "02_bad.log").read_text()  # the kernel's stderr
    results = json.loads((tmp_path / "run" / "results" / "01_good.json").read_text())
    assert results["steps"] == 1                                  # --quick used the smoke value
    report = (tmp_path / "run" / "report.md").read_text()
    assert "FAILED at cell 3" in report and "| 01_good |" in report and "1.50" in report

    # fix 02 and continue the run in its folder from 02: 01's outcome stays in the report
    _notebook(nbs / "02_bad.ipynb", ["RUN_DIR = ''\nSTEPS = 10", "x = 1"])
    again = runner.run(quick=True, folder=tmp_path / "run", start="02")
    assert [o.name for o in again.outcomes] == ["02_bad", "03_after"] and again.ok
    report = (tmp_path / "run" / "report.md").read_text()
    assert "FAILED" not in report and all(f"| [{n}]" in report for n in ("01_good", "02_bad", "03_after"))
    with pytest.raises(ValueError, match="--from '09'"):
        runner.notebooks(start="09")


def test_only_selects_by_number_and_rejects_unknown():
    assert [p.stem[:2] for p in runner.notebooks("00")] == ["00"]
    with pytest.raises(ValueError, match="matches no notebook"):
        runner.notebooks("99")


def test_cli_exit_codes(tmp_path):
    from kit.__main__ import main
    assert main(["run", "--only", "99", "--out", str(tmp_path)]) == 2
    assert main(["device"]) == 0


def test_overview_table_prefers_the_comparison_notebook(tmp_path):
    record("01_full", {"overview_row": {"method": "full", "trainable_share": 1.0}}, tmp_path)
    record("06_choose", {"overview_rows": [{"method": "full"}, {"method": "lora"}, {"method": "qlora"}]}, tmp_path)
    table = runner.overview_table(runner.load_results(tmp_path))
    assert table.count("\n") == 4 and "| qlora |" in table


@pytest.mark.notebook
def test_a_stalled_cell_is_cut_off_and_run_again_but_an_error_is_not(tmp_path, capsys):
    """A cell past cell_timeout counts as a stalled run and gets one more attempt; a cell that
    raises is reported at once. (A lost kernel message once left a test waiting forever.)"""
    tries = tmp_path / "tries.txt"
    slow = _notebook(tmp_path / "01_slow.ipynb", [
        "RUN_DIR = ''",
        f"import time\nwith open({str(tries)!r}, 'a') as f:\n    f.write('x')\ntime.sleep(30)"])
    out = runner.execute(slow, tmp_path / "run", {}, cell_timeout=3, attempts=2)
    assert not out.ok and out.stalled and "3 s limit per cell" in out.error
    assert tries.read_text() == "xx"                                  # tried twice
    assert "running it again (2 of 2)" in capsys.readouterr().err
    bad = _notebook(tmp_path / "02_bad.ipynb", ["RUN_DIR = ''", "raise ValueError('boom')"])
    out = runner.execute(bad, tmp_path / "run", {}, cell_timeout=30, attempts=2)
    assert not out.ok and not out.stalled and "boom" in out.error
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        runner.execute(bad, tmp_path / "run", {}, attempts=0)
