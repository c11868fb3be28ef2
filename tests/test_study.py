"""kit.study, kit.study.report and kit.study.plots: forgetting without generation noise, the
report's reasoning on made-up runs whose answers are known (frontier, matched learning, rate range,
verdicts), the smoke study's outputs (every field notebook 06 and lesson 06 read), resuming."""
import copy
import json
import math
import zlib

import pytest
import torch

from kit.engine.data import tokenize
from kit.engine.evaluate import divergence, reference_answers
from kit.engine.train import best_evaluation, prepare_model
from kit.machine.models import load_model
from kit.study import plots as study_plots, report as study_report, run as study


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


# ---------------------------------------------------------------------------- the report, on made-up runs
def test_the_frontier_keeps_only_points_nothing_beats_on_both():
    pts = [(0.5, 0.01), (0.3, 0.05), (0.4, 0.02), (0.2, 0.2), (0.35, 0.1), (0.25, 0.03)]
    assert study_report.frontier(pts) == [(0.2, 0.2), (0.25, 0.03), (0.4, 0.02), (0.5, 0.01)]


def _run(method, lr, seed, vals, kls, nll=1.0, exact=True, init="plain", n_items=40, n_prompts=6):
    hist = [{"step": 4 * i, "val_loss": v, "kl": k, "per_item_kl": [k] * n_prompts}
            for i, (v, k) in enumerate(zip(vals, kls))]
    best = min(range(len(vals)), key=vals.__getitem__)
    g = torch.Generator().manual_seed(zlib.crc32(repr((method, lr, seed, init)).encode()))
    noisy = (nll + 0.05 * torch.randn(n_items, generator=g)).tolist()
    kl_items = {"fp32": {"kl": kls[best], "per_item_kl": [kls[best]] * n_prompts}}
    if method == "qlora":
        kl_items["nf4"] = {"kl": kls[best] / 2, "per_item_kl": [kls[best] / 2] * n_prompts}
    return {"method": method, "init": init, "lr": lr, "seed": seed, "seconds": 1.0, "median_step_s": 0.1,
            "history": hist, "stop": "plateau", "steps": 4 * (len(vals) - 1), "best_step": 4 * best,
            "best_val": vals[best],
            "measured": {"answer_nll": noisy, "exact": [exact] * n_items, "mean_nll": sum(noisy) / n_items,
                         "accuracy": float(exact), "kl": kl_items, "capitals": 0.5}}


def _made_up_study():
    runs = []
    for method, shift in (("full", 0.0), ("lora", 0.5)):
        for lr, val in ((1e-4, 0.30), (3e-4, 0.20), (1e-3, 0.35)):
            runs.append(_run(method, lr * 10 ** shift, 0, [1.0, 0.6, val, val + 0.01],
                             [0.0, 0.1, 0.2, 0.25] if method == "full" else [0.0, 0.05, 0.1, 0.12]))
        for seed in (1, 2):                     # the chosen rate's seeds spread by 0.01
            runs.append(_run(method, 3e-4 * 10 ** shift, seed, [1.0, 0.6, 0.2 + 0.01 * seed, 0.25],
                             [0.0, 0.1, 0.2, 0.25] if method == "full" else [0.0, 0.05, 0.1, 0.12]))
    settings = {"methods": ["full", "lora"], "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
                "model": "made-up", "task": "dates", "max_steps": 12, "batch_size": 8, "patience": 2, "threshold": 0.0}
    base = {b: {"val_loss": 1.0, "accuracy": 0.0, "mean_nll": 2.0, "capitals": 0.5,
                "kl": {"fp32": {"kl": 0.0, "per_item_kl": [0.0] * 6}}} for b in ("fp32", "nf4")}
    return study_report.summarize(settings, runs, base)


def test_the_report_matches_learning_and_tells_what_it_can_detect():
    s = _made_up_study()
    assert s["methods"]["full"]["chosen_lr"] == 3e-4 and s["methods"]["lora"]["chosen_lr"] == pytest.approx(3e-4 * 10 ** 0.5)
    # the matched loss is the worst best of the chosen-rate runs: 0.22 (seed 2)
    assert s["matched_val_loss"] == pytest.approx(0.22)
    # each seed crosses 0.22 between its evaluations (0.6, KL k) and (best, KL 2k): k + (0.6 - 0.22) / (0.6 - best) * k
    full, lora = s["arms"]["full"]["kl_at_matched"], s["arms"]["lora"]["kl_at_matched"]
    crossing = [0.38 / (0.6 - best) for best in (0.20, 0.21, 0.22)]
    assert full["mean"] == pytest.approx(sum(0.1 + w * 0.1 for w in crossing) / 3, rel=1e-6)
    assert lora["mean"] == pytest.approx(sum(0.05 + w * 0.05 for w in crossing) / 3, rel=1e-6)
    by = {(c["metric"], c["a"], c["b"]): c for c in s["comparisons"]}
    kl = by[("kl_at_matched", "full", "lora")]
    assert kl["verdict"] == "different" and kl["low"] > 0          # full forgets more, identically every seed
    nll = by[("answer_nll", "full", "lora")]                       # the same NLL up to noise
    assert nll["low"] < 0 < nll["high"] and nll["verdict"].startswith("could not detect (smallest detectable:")
    assert nll["detectable"] == pytest.approx(2.8 * nll["se"], rel=0.01)
    # the neighbours 0.30 and 0.35 sit far outside a seed spread of 0.01: the range is the chosen rate alone
    rc = s["methods"]["full"]["rate_choice"]
    assert rc["range"] == [3e-4, 3e-4] and all(n["sds_above"] > 5 for n in rc["neighbours"] if n["lr"] != 3e-4)
    assert s["lr_ratio"]["low"] == pytest.approx(10 ** 0.5) == pytest.approx(s["lr_ratio"]["high"])
    for metric in ("exact_match", "kl_best_step", "kl_at_matched"):   # bounded quantities stay in bounds
        d = s["arms"]["full"][metric]
        eps = 1e-12                                                # float rounding of equal values
        assert 0 <= d["low"] <= d["mean"] + eps and d["mean"] <= d["high"] + eps
        assert d["high"] <= (1 if metric == "exact_match" else math.inf)
    assert "could not detect" in study_report.report(s)


def test_a_run_that_never_reaches_the_matched_loss_is_not_extrapolated():
    r = _run("full", 1e-4, 0, [1.0, 0.5, 0.4], [0.0, 0.1, 0.2])
    assert study_report.kl_at(r, 0.3) is None
    assert study_report.kl_at(r, 0.5) == pytest.approx([0.1] * 6)


# ---------------------------------------------------------------------------- the smoke study
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return out, study.run(study.QUICK, out)


@pytest.mark.slow
def test_smoke_study_records_what_notebook_06_reads(smoke, tmp_path):
    out, s = smoke
    assert json.loads((out / "study.json").read_text()) == json.loads(json.dumps(s))
    assert set(s["methods"]) == {"full", "lora", "qlora"} and "qlora-loftq" in s["arms"]
    for m, info in s["methods"].items():
        assert info["chosen_lr"] in info["rates"] and len(info["rates"]) >= len(study.QUICK.rates[m])
        best = min(info["sweep"], key=lambda r: r["best_val"])
        assert best["lr"] == info["chosen_lr"]                       # chosen by validation loss
        a = s["arms"][m]
        assert a["seeds"] == study.QUICK.seeds and len(a["curves"]) == study.QUICK.seeds
        for r in a["runs"]:
            assert r["stop"] in ("plateau", "cap") and r["kl"] >= 0
        for metric in ("answer_nll", "exact_match", "kl_best_step"):
            assert a[metric]["low"] <= a[metric]["mean"] <= a[metric]["high"]
    chosen = {m: info["chosen_lr"] for m, info in s["methods"].items()}
    for f in (out / "runs").glob("*.json"):                          # every run, sweep included
        r = json.loads(f.read_text())
        # measured at its best step: every run at a chosen rate; a sweep run at another rate has
        # its history (learning and forgetting at every evaluation) and no test scores
        if r["init"] == "plain" and r["lr"] != chosen[r["method"]]:
            assert r["seed"] == 0 and r["measured"] is None and r["measure_seconds"] == 0
        else:
            assert len(r["measured"]["answer_nll"]) == study.QUICK.n_test
        assert len(r["history"]) >= 2
        assert all(e["kl"] >= 0 for e in r["history"])
        assert r["history"][0]["step"] == 0
        # the measured step is the best evaluation as early stopping reads it: a plateau run's is
        # `patience` evaluations before its last
        best = best_evaluation([e["val_loss"] for e in r["history"]], study.QUICK.threshold)
        assert r["best_step"] == r["history"][best]["step"]
        if r["stop"] == "plateau":
            assert len(r["history"]) - 1 - best == study.QUICK.patience
        if r["method"] == "qlora":
            assert all("kl_own" in e for e in r["history"])
    loftq = [json.loads(f.read_text()) for f in (out / "runs").glob("qlora-loftq_*.json")]
    assert len(loftq) == study.QUICK.loftq_seeds
    assert all(r["loftq"]["residual_after"] < r["loftq"]["residual_before"] for r in loftq)
    assert s["base"]["nf4"]["kl"] > 0                                 # 4-bit storage alone moves it
    d = s["qlora_decomposition"]
    assert d["sum_of_parts"] == pytest.approx(d["base_to_4bit"]["mean"] + d["4bit_to_tuned"]["mean"])
    assert {c["metric"] for c in s["comparisons"]} >= {"answer_nll", "exact_match", "kl_at_matched", "kl_step0"}
    assert s["lora_conventions"] == {"r": 8, "alpha": 16, "scaling": 2.0, "dropout": 0.0, "targets": "all-linear"}
    for key in ("hardware", "versions", "recorded_at", "command", "train_seconds", "wall_s", "lr_ratio"):
        assert key in s
    assert "| lora |" in study_report.report(s)
    assert set(study_plots.save_all(s, tmp_path)) == set(study_plots.FIGURES)


@pytest.mark.slow
def test_the_study_resumes_without_running_finished_runs(smoke, monkeypatch):
    out, first = smoke
    monkeypatch.setattr(study, "train_one", lambda *a, **k: pytest.fail("a finished run ran again"))
    bars = []
    real_tqdm = study.tqdm
    monkeypatch.setattr(study, "tqdm", lambda *a, **k: bars.append(real_tqdm(*a, **k)) or bars[-1])
    again = study.run(study.QUICK, out)
    assert again["methods"] == first["methods"] and again["comparisons"] == first["comparisons"]
    done = len(list((out / "runs").glob("*.json")))
    assert bars[0].n == bars[0].initial == done        # runs read from file do not set the pace of the ETA
    assert again["calls"] == first["calls"] + 1
    with pytest.raises(ValueError, match="other settings"):
        study.run(study.StudyConfig(model="tiny-llama"), out)


def test_lesson_06s_figures_are_the_committed_reference_study(tmp_path):
    """The study figures lesson 06 shows are what kit.study.plots draws from the committed
    study.json, up to anti-aliasing: a figure cannot drift from the numbers the lesson quotes."""
    import matplotlib.image as mpimg
    import numpy as np

    from kit.view import lessons

    reference = lessons.REFERENCE / "study"
    summary = json.loads((reference / "study.json").read_text())
    for name, path in study_plots.save_all(summary, tmp_path).items():
        committed = mpimg.imread(reference / "figures" / f"{name}.png")
        drawn = mpimg.imread(path)
        assert drawn.shape == committed.shape, name
        changed = (np.abs(drawn - committed).max(axis=-1) > 0.1).mean()   # share of pixels that differ
        assert changed < 1e-4, f"{name}.png differs from the reference study ({changed:.2%} of its pixels)"
