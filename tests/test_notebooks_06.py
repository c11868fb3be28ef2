"""06 · Which one should you use?, run headless; assertions on what it recorded.

The first test runs the smoke parameters on the bundled model (its own short runs). The second
runs the notebook twice on tiny-llama with another RANK and GPU and checks that the tables move
with them: nothing in them is typed by hand."""

import pytest

from conftest import run_notebook


NAME = "06_choosing_a_method"


def run(folder, **overrides):
    return run_notebook(NAME, folder, **overrides)


@pytest.mark.notebook
@pytest.mark.slow
def test_choosing_notebook(tmp_path):
    res = run(tmp_path)
    rows = {r["method"]: r for r in res["overview_rows"]}
    assert set(rows) == {"full", "lora", "qlora"}
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

    # the estimator's 7B figures against the seed's
    seven = res["estimate_7b_gb"]
    assert seven["full-amp"] == pytest.approx(120, rel=0.15)
    assert seven["full-16"] == pytest.approx(60, rel=0.15)
    assert seven["lora"] == pytest.approx(16, rel=0.15)
    assert 4.5 <= seven["qlora-4"] <= 10
    assert seven["qlora-2"] is None                        # bitsandbytes has no 2-bit type
    notes = {(r["size"], r["method"]): r["note"] for r in res["seed_table"]}
    assert "floor" in notes[("7B", "qlora-4")] and "A and B" in notes[("7B", "qlora-4")]

    # estimated against measured on the bundled model: weights, gradients, optimizer agree
    for method, table in res["estimate_vs_measured"].items():
        by = {r["component"]: r for r in table}
        for comp in ("weights", "gradients", "optimizer"):
            assert by[comp]["ratio"] == pytest.approx(1, rel=0.05), (method, comp)

    calc = res["calculator"]
    assert calc["settings"]["gpu"] == "T4" and calc["fits"] is True      # 7B QLoRA on a T4
    assert calc["largest"]["qlora"]["params"] > calc["largest"]["lora"]["params"] > calc["largest"]["full"]["params"]
    for fig in ("06_overview", "06_estimate_vs_measured", "06_seed_table", "06_calculator"):
        assert (tmp_path / "figures" / f"{fig}.png").stat().st_size > 5_000


@pytest.mark.notebook
@pytest.mark.slow
def test_tables_follow_rank_and_gpu(tmp_path):
    tiny = {"MODEL": "tiny-llama", "N_TEST": 2, "N_PROBE": 2, "STEPS": 1}
    a = run(tmp_path / "a", RANK=4, GPU="T4", **tiny)
    b = run(tmp_path / "b", RANK=16, GPU="A100-80GB", **tiny)
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
