"""The GPU check: refuses politely without a GPU; on the CPU (--allow-cpu) it runs the same
path, and the ledger it measures equals the estimator's figure."""
import json

import pytest
import torch

from kit import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_without_a_gpu_it_says_so_and_runs_nothing(capsys, monkeypatch):
    monkeypatch.setattr(gpu_check, "check_method", lambda *a, **k: pytest.fail("ran a check"))
    assert gpu_check.main(steps=2) == 2
    assert "no CUDA GPU" in capsys.readouterr().out


def test_allow_cpu_runs_lora_and_qlora_and_the_ledger_meets_the_estimate(tmp_path, capsys):
    assert gpu_check.main(steps=2, model="tiny-llama", allow_cpu=True, out=str(tmp_path)) == 0
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["lora", "qlora"]
    for r in rows:
        assert r["steps"] == 2 and r["adapter_dtypes"] == ["float32"]
        assert r["ledger_total"] == pytest.approx(r["estimate_for_ledger"], rel=0.01)
        assert r["cuda_peak"] is None  # a CPU has no CUDA peak; on a GPU this is the check
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| lora | cpu" in table and "| qlora | cpu" in table
    assert gpu_check.main(steps=0, allow_cpu=True) == 2
