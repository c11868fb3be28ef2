"""kit.study and the measures it rests on: forgetting without generation noise, the smoke study's
outputs (every field notebook 06 and lesson 06 read), and resuming without re-running."""
import copy
import json

import pytest
import torch

from kit import study
from kit.data import tokenize
from kit.evaluate import divergence, reference_answers
from kit.models import load_model
from kit.train import prepare_model


@pytest.fixture(scope="module")
def general():
    base, tok = load_model("tiny-llama")
    answers = reference_answers(base, tok, ["What is the capital of France?", "Name a colour.",
                                            "What is 2 plus 2?"], max_new_tokens=8)
    return base, tok, tokenize(answers, tok)


def test_forgetting_is_zero_for_the_base_and_grows_with_the_change(general):
    base, tok, data = general
    same = divergence(copy.deepcopy(base), base, data, tok.pad_token_id)
    assert same["kl"] == pytest.approx(0, abs=1e-6) and same["nll"] == pytest.approx(same["reference_nll"])
    kls = []
    for scale in (0.03, 0.1, 0.3):
        moved = copy.deepcopy(base)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in moved.parameters():
                p.add_(torch.randn(p.shape, generator=g) * scale * p.std())
        kls.append(divergence(moved, base, data, tok.pad_token_id)["kl"])
    assert 0 < kls[0] < kls[1] < kls[2], kls
    # a peft model is compared with its own base (adapters off): fresh adapters (B = 0) change nothing
    fresh = prepare_model(copy.deepcopy(base), "lora", lora_dropout=0.0)
    assert divergence(fresh, None, data, tok.pad_token_id)["kl"] == pytest.approx(0, abs=1e-7)
    with pytest.raises(ValueError, match="reference=None needs a peft model"):
        divergence(base, None, data, tok.pad_token_id)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return out, study.run(study.SMOKE, out)


def test_smoke_study_records_what_notebook_06_reads(smoke):
    out, s = smoke
    assert json.loads((out / "study.json").read_text()) == json.loads(json.dumps(s))
    assert set(s["methods"]) == {"full", "lora", "qlora"}
    for m, info in s["methods"].items():
        assert info["chosen_lr"] in info["rates"] and len(info["rates"]) >= len(study.SMOKE.rates[m])
        best = min(info["sweep"], key=lambda r: r["best_val"])
        assert best["lr"] == info["chosen_lr"]                       # chosen by validation loss
        assert len(info["curves"]) == study.SMOKE.seeds
        for when in ("best", "last"):
            acc = info[when]["accuracy"]
            assert acc["n"] == study.SMOKE.seeds and acc["low"] <= acc["mean"] <= acc["high"]
            for r in info[when]["per_seed"]:
                assert r["interval"][0] <= r["accuracy"] <= r["interval"][1] and r["kl"] >= 0
        if m == "qlora":
            assert info["best"]["kl_own_base"]["mean"] >= 0
    assert s["base"]["nf4"]["forgetting"]["kl"] > 0                   # 4-bit storage alone moves it
    pair = s["pairs"]["full vs lora"]["best"]
    assert pair["bootstrap"]["verdict"] in ("different", "within noise")
    assert len(pair["mcnemar_per_seed"]) == study.SMOKE.seeds
    assert s["lora_conventions"] == {"r": 8, "alpha": 16, "scaling": 2.0, "dropout": 0.0, "targets": "all-linear"}
    for key in ("hardware", "versions", "recorded_at", "command", "train_seconds", "lr_ratio"):
        assert key in s
    assert not list((out / "weights").glob("*.safetensors"))           # sweep weights cleaned up
    assert "| lora |" in study.report(s)


def test_the_study_resumes_without_running_finished_runs(smoke, monkeypatch):
    out, first = smoke
    monkeypatch.setattr(study, "train_one", lambda *a, **k: pytest.fail("a finished run ran again"))
    again = study.run(study.SMOKE, out)
    assert again["methods"] == first["methods"] and again["pairs"] == first["pairs"]
    with pytest.raises(ValueError, match="other settings"):
        study.run(study.StudyConfig(model="tiny-llama"), out)


def test_lesson_06s_figures_are_the_committed_reference_study(tmp_path):
    """The study figures lesson 06 shows are what kit.plots draws from the committed study.json,
    up to anti-aliasing: a figure cannot drift from the numbers the lesson quotes (moving LoRA's
    chosen-rate marker one rate over changes 0.14% of the first figure's pixels)."""
    import matplotlib.image as mpimg
    import numpy as np

    from kit import lessons, plots

    reference = lessons.REFERENCE / "study"
    summary = json.loads((reference / "study.json").read_text())
    for name, path in plots.study_figures(summary, tmp_path).items():
        committed = mpimg.imread(reference / "figures" / f"{name}.png")
        drawn = mpimg.imread(path)
        assert drawn.shape == committed.shape, name
        changed = (np.abs(drawn - committed).max(axis=-1) > 0.1).mean()   # share of pixels that differ
        assert changed < 1e-4, f"{name}.png differs from the reference study ({changed:.2%} of its pixels)"
