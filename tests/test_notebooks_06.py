"""06 · Which one should you use?, run headless; assertions on what it recorded.

Every test reads a quick study (`python -m kit study --quick`, made once for the module). One run
of the notebook with its smoke parameters on the bundled model is asserted claim by claim; the
last test runs it twice on tiny-llama with another RANK and GPU and checks that the tables move
with them: nothing in them is typed by hand."""

import json
from pathlib import Path

import pytest
from conftest import assert_exercises, run_notebook

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

NAME = "06_choosing_a_method"


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    """A quick study (tiny-llama, a few steps; about a minute): the notebook's STUDY."""
    from kit.study import run as study
    out = tmp_path_factory.mktemp("study")
    study.run(study.QUICK, out)
    return out / "study.json"


def run(folder, study, **overrides):
    return run_notebook(NAME, folder, STUDY=str(study), **overrides)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, smoke_study):
    """The notebook's smoke run, reading the quick study: (folder, results, the study's summary)."""
    folder = tmp_path_factory.mktemp("run06")
    return folder, run(folder, smoke_study), json.loads(smoke_study.read_text())


def overview(res) -> dict:
    rows = {r["method"]: r for r in res["overview_rows"]}
    assert set(rows) == {"full", "lora", "qlora"}
    return rows


def test_memory_and_the_share_trained_order_the_methods(recorded):
    _, res, _ = recorded
    rows = overview(res)
    full, lora, qlora = rows["full"], rows["lora"], rows["qlora"]
    # weight memory: QLoRA's 4-bit base is the smallest. On a CPU LoRA's frozen base stays fp32,
    # so LoRA holds full's weights plus its adapters; with a GPU's dtypes full > lora > qlora.
    assert qlora["weight_memory_mb"] < lora["weight_memory_mb"] and qlora["weight_memory_mb"] < full["weight_memory_mb"]
    assert full["weight_memory_mb"] <= lora["weight_memory_mb"] <= full["weight_memory_mb"] * 1.05
    assert full["weight_memory_gpu_mb"] > lora["weight_memory_gpu_mb"] > qlora["weight_memory_gpu_mb"]
    assert full["train_memory_mb"] > lora["train_memory_mb"]
    # adapters: the same share for LoRA and QLoRA, a few percent at most; full trains everything
    assert lora["trainable_share"] == pytest.approx(qlora["trainable_share"])
    assert 0 < lora["trainable_share"] < 0.05 and full["trainable_share"] == pytest.approx(1.0)
    assert full["bytes_per_param"] > lora["bytes_per_param"] > qlora["bytes_per_param"]


def test_the_estimators_7b_figures_against_the_seeds(recorded):
    _, res, _ = recorded
    # the estimator's 7B figures against the seed's
    seven = res["estimate_7b_gb"]
    assert seven["full-amp"] == pytest.approx(120, rel=0.15)
    assert seven["full-16"] == pytest.approx(60, rel=0.15)
    assert seven["lora"] == pytest.approx(16, rel=0.15)
    assert 4.5 <= seven["qlora-4"] <= 10
    assert seven["qlora-2"] is None                        # bitsandbytes has no 2-bit type
    notes = {(r["size"], r["method"]): r["note"] for r in res["seed_table"]}
    assert "floor" in notes[("7B", "qlora-4")] and "A and B" in notes[("7B", "qlora-4")]


def test_estimated_equals_measured_on_the_bundled_model(recorded):
    _, res, _ = recorded
    # estimated against measured on the bundled model: weights, gradients, optimizer agree
    for method, table in res["estimate_vs_measured"].items():
        by = {r["component"]: r for r in table}
        for comp in ("weights", "gradients", "optimizer"):
            assert by[comp]["ratio"] == pytest.approx(1, rel=0.05), (method, comp)


def test_the_calculator_fits_7b_qlora_on_a_t4_and_the_figures(recorded):
    tmp_path, res, _ = recorded
    calc = res["calculator"]
    assert calc["settings"]["gpu"] == "T4" and calc["fits"] is True      # 7B QLoRA on a T4
    assert calc["largest"]["qlora"]["params"] > calc["largest"]["lora"]["params"] > calc["largest"]["full"]["params"]
    for fig in ("06_overview", "06_estimate_vs_measured", "06_seed_table", "06_calculator", "06_study_lr_curves",
                "06_study_plane", "06_study_matched", "06_study_loss_bands"):
        assert (tmp_path / "figures" / f"{fig}.png").stat().st_size > 5_000


def test_quality_comes_from_the_study_with_its_verdicts(recorded):
    _, res, summary = recorded
    rows = overview(res)
    # quality comes from the study, with its intervals and the comparisons' verdicts
    study = res["study"]
    assert json.loads(Path(study["path"]).read_text()) == summary       # the quick study it was given
    assert study["smoke"] is True and study["reference"] is False
    assert study["hardware"] == summary["hardware"] and study["recorded_at"] == summary["recorded_at"]
    assert "quick study" in study["label"] and "recorded on" not in study["label"]
    assert set(study["methods"]) == {"full", "lora", "qlora"} and "qlora-loftq" in study["arms"]
    for m, info in study["methods"].items():
        assert info["chosen_lr"] == summary["methods"][m]["chosen_lr"] and info["chosen_lr"] in info["rates"]
        arm = study["arms"][m]
        acc = arm["exact_match"]
        assert arm["seeds"] == summary["settings"]["seeds"] and 0 <= acc["low"] <= acc["mean"] <= acc["high"] <= 1
        assert rows[m]["accuracy_after"] == pytest.approx(acc["mean"])            # the study's, not a short run's
        assert rows[m]["answer_nll_after"] == pytest.approx(arm["answer_nll"]["mean"])
        assert rows[m]["retention_after"] == pytest.approx(arm["capitals"]["mean"])
        assert "study" in rows[m]["quality_source"] and arm["kl_at_matched"]["low"] >= 0
    assert rows["qlora"]["accuracy_before"] == summary["base"]["nf4"]["accuracy"]
    assert study["comparisons"] == summary["comparisons"]
    for c in study["comparisons"]:
        assert c["low"] <= c["diff"] <= c["high"] or c["low"] == c["high"]
        assert (c["verdict"] == "different") == (not c["low"] <= 0 <= c["high"]) or c["se"] == 0
    for c in (c for c in study["comparisons"] if c["metric"] in ("answer_nll", "kl_at_matched") and "loftq" not in c["b"]):
        assert f"{c['a']} vs {c['b']}, {c['metric']}" in res["decision"]
    assert study["lr_ratio"]["lora/full"] == pytest.approx(study["methods"]["lora"]["chosen_lr"] / study["methods"]["full"]["chosen_lr"])


def test_the_decision_names_the_estimators_error_band(recorded):
    _, res, _ = recorded
    # the decision names the estimator's error band where the headroom is smaller than it
    band = res["peak_band"]
    assert 1.05 < band < 1.2                                  # CUDA peak / estimate on the H200
    gpu_gb = res["calculator"]["gpu_gb"]
    for m, b in res["decision_band"].items():
        assert b["7b_inside_band"] == (b["7b_gb"] <= gpu_gb < b["7b_gb"] * band), m
    assert res["decision_band"]["lora"]["7b_inside_band"] is True     # 7B LoRA on a T4: ~14 of 15 GB
    assert res["decision_band"]["qlora"]["7b_inside_band"] is False
    assert "error band" in res["decision"]


def test_the_exercises_check_both_ways(recorded):
    _, res, _ = recorded
    assert_exercises(res, wrong={1: (["full-amp", "lora"], False), 2: (8192, 8192), 3: 10.0})


def test_tables_follow_rank_and_gpu(tmp_path, smoke_study):
    tiny = {"MODEL": "tiny-llama", "STEPS": 1, "EXERCISES": False}
    a = run(tmp_path / "a", smoke_study, RANK=4, GPU="T4", **tiny)
    b = run(tmp_path / "b", smoke_study, RANK=16, GPU="A100-80GB", **tiny)
    share = lambda res, m: next(r for r in res["overview_rows"] if r["method"] == m)["trainable_share"]
    assert share(b, "lora") == pytest.approx(4 * share(a, "lora"), rel=0.02)      # r 4 -> 16
    assert share(b, "qlora") > share(a, "qlora")
    assert b["calculator"]["total_gb"] > a["calculator"]["total_gb"]
    assert b["calculator"]["gpu_gb"] > a["calculator"]["gpu_gb"]
    assert b["calculator"]["largest"]["qlora"]["params"] > a["calculator"]["largest"]["qlora"]["params"]
    lora_gb = lambda res: {r["size"]: r["estimate_gb"] for r in res["seed_table"] if r["method"] == "lora"}
    assert all(lora_gb(b)[s] > lora_gb(a)[s] for s in lora_gb(a))
    fits = lambda res: sum(r["fits_on_gpu"] for r in res["seed_table"])
    assert fits(b) > fits(a)
    assert a["decision"] != b["decision"]
    est = lambda res: res["estimates"]["lora"]["weights"]
    assert est(b) > est(a)
