"""The GPU check: refuses politely without a GPU; on the CPU (--allow-cpu) it runs the same
path, and the ledger it measures equals the estimator's figure."""
import json

import pytest
import torch

from kit.commands import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_without_a_gpu_it_says_so_and_runs_nothing(capsys, monkeypatch):
    monkeypatch.setattr(gpu_check, "check_method", lambda *a, **k: pytest.fail("ran a check"))
    assert gpu_check.main(steps=2) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


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


def test_recipe_settings_reach_the_check(monkeypatch, tmp_path):
    """--recipe takes model, method, rank, batch and checkpointing from the recipe; on a CPU
    the paged optimizer (CUDA only) falls back to AdamW."""
    seen = []

    def fake(name, method, steps, **settings):
        seen.append((name, method, steps, settings))
        return {"method": method, "model": name, "device": "cpu", "gpu": "cpu", "compute_dtype": "float32",
                "grad_scaling": False, "adapter_dtypes": ["float32"], "median_step_s": 1.0,
                "tokens_per_s": 1.0, "loss_first": 2.0, "loss_last": 1.0, "ledger_total": 1e6,
                "estimate_for_ledger": 1e6, "cuda_peak": None, "estimate_peak": 1e6}
    monkeypatch.setattr(gpu_check, "check_method", fake)
    assert gpu_check.main(steps=3, allow_cpu=True, out=str(tmp_path), recipe="t4-qlora-7b") == 0
    (name, method, steps, s), = seen
    assert (name, method, steps) == ("qwen2.5-7b", "qlora", 3)
    c = s["config"]
    assert c.per_device_train_batch_size == 4 and c.gradient_checkpointing is True and c.optim == "adamw_torch"
    assert (c.lora_r, c.lora_alpha, s["task"]) == (16, 32, "extract")
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["recipe"] == "t4-qlora-7b" and "GB" in saved["note"]
    assert gpu_check.main(steps=1, allow_cpu=True, out=str(tmp_path), recipe="no-such-recipe") == 2


def test_random_weights_model_has_the_architecture_and_trains(tmp_path, monkeypatch):
    """ensure_random builds the named architecture with random weights; a check with
    checkpointing on runs on it, and its ledger still meets the estimate."""
    from kit.arch import Arch, param_count
    from kit.engine.train import TrainConfig
    from kit.machine import models
    bundled = models.ensure_bundled()            # the tokenizer comes from here
    monkeypatch.setattr(models, "ensure_bundled", lambda: bundled)
    monkeypatch.setenv("KIT_CACHE", str(tmp_path))
    arch = Arch("test-mini", 96, 256, 2, 4, 2, 49152, True)
    folder = models.ensure_random(arch, dtype=torch.float32)
    assert folder == tmp_path / "random-test-mini" and (folder / "tokenizer.json").exists()
    config = TrainConfig(per_device_train_batch_size=2, gradient_checkpointing=True, lora_r=4, lora_alpha=8,
                         lora_dropout=0.0)
    row = gpu_check.check_method(str(folder), "lora", steps=2, config=config)
    assert row["parameters"] - row["trainable"] == param_count(arch)
    assert row["gradient_checkpointing"] is True and row["r"] == 4 and row["steps"] == 2
    assert row["ledger_total"] == pytest.approx(row["estimate_for_ledger"], rel=0.02)
    with pytest.raises(ValueError, match="mixture of 8 experts"):
        models.ensure_random("mixtral-8x7b")


def test_methods_are_checked_before_anything_loads(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "check_method", lambda *a, **k: pytest.fail("ran a check"))
    assert gpu_check.main(steps=1, allow_cpu=True, methods=["ful"]) == 2
    assert "--methods takes a comma-separated list from full, lora, qlora" in capsys.readouterr().err
    assert gpu_check.main(steps=1, allow_cpu=True, methods=[]) == 2
    assert gpu_check.main(steps=1, allow_cpu=True, methods=["lora"], recipe="cpu-lora") == 2
    assert "--recipe sets the method" in capsys.readouterr().err
