"""03 · LoRA in practice, run headless with its smoke parameters; assertions on what it recorded."""

import pytest
from conftest import assert_exercises, recorded_run

from kit.files import REPO_ROOT

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

recorded = recorded_run("03_lora_in_practice")


def test_few_parameters_train_and_training_helps(recorded):
    _, _, res = recorded
    assert res["rank"] == 8 and res["trainable_share"] < 0.02
    # the smoke run trains tiny-llama (random weights): its loss falls, its exact match stays at 0.
    # That LoRA and QLoRA raise exact match on the bundled model: tests/test_train.py
    assert res["train_loss"][-1] < res["train_loss"][0]
    assert 0 <= res["accuracy_before"] <= 1 and 0 <= res["accuracy_after"] <= 1
    # the frozen base needs no gradients and no Adam states: those bars shrink
    assert res["ledger"]["gradients"] < 0.05 * res["ledger_full"]["gradients"]
    assert res["ledger"]["optimizer"] < 0.05 * res["ledger_full"]["optimizer"]
    assert res["ledger"]["total"] < res["ledger_full"]["total"]
    row = res["overview_row"]
    assert row["method"] == "lora" and row["trainable_share"] == res["trainable_share"]


def test_the_quick_run_states_its_interval(recorded):
    _, params, res = recorded
    assert res["n_test"] == params["N_TEST"]
    low, high = res["accuracy_interval_after"]
    assert low <= res["correct_after"] / res["n_test"] == res["accuracy_after"] <= high
    assert high - low > 0.2                           # 8 test items pin down little: hence the study
    assert res["study_reference"] == "lessons/reference/study/study.json"
    if (REPO_ROOT / res["study_reference"]).exists():   # the study's paired verdict, full vs LoRA
        verdict = res["study_full_vs_lora"]["verdict"]
        assert verdict == "different" or verdict.startswith("could not detect (smallest detectable: ")


def test_adapter_file_is_small_and_reloads_and_merges(recorded):
    _, _, res = recorded
    assert res["adapter_bytes"] < 0.05 * res["model_bytes"]
    assert res["reload_max_abs_diff"] < 1e-4
    assert res["merge_max_abs_diff"] < 1e-3
    assert res["lora_modules_after_merge"] == 0


def test_swap_changes_outputs_and_disable_restores_the_base(recorded):
    _, _, res = recorded
    assert res["swap_max_abs_diff"] > 1e-2
    assert res["disable_max_abs_diff"] < 1e-5
    assert len(set(res["adapter_names"])) == 2        # two adapters, two names


def test_sweeps_are_recorded(recorded):
    folder, params, res = recorded
    sweep = sorted(res["sweep"], key=lambda x: x["r"])
    assert [x["r"] for x in sweep] == sorted(params["SWEEP_RANKS"])
    assert all(a["trainable"] < b["trainable"] for a, b in zip(sweep, sweep[1:]))
    conventions = res["sweep_conventions"]            # rank is not confounded with the step size:
    assert conventions["lora_alpha"] == res["alpha"] and not conventions["use_rslora"]
    assert all(x["scaling"] == pytest.approx(res["alpha"] / x["r"]) for x in sweep)  # one alpha, alpha / r
    assert conventions["lora_dropout"] == 0.05        # the kit's default (peft's is 0)
    qv, al = res["targets_compare"]["q_proj,v_proj"], res["targets_compare"]["all-linear"]
    assert qv["trainable"] < al["trainable"]
    assert sorted(x["lr"] for x in res["lr_compare"]) == sorted(params["LR_COMPARE"])
    for name in ("03_memory_ledger", "03_loss_curves", "03_file_sizes", "03_rank_sweep",
                 "03_targets", "03_learning_rates"):
        assert (folder / "figures" / f"{name}.png").stat().st_size > 5_000


def test_exercises(recorded):
    _, params, res = recorded
    ex = res["exercises"]
    assert ex["2"]["facts"]["steps"] == [max(1, params["SWEEP_STEPS"] // 2), params["SWEEP_STEPS"]]
    assert ex["3"]["facts"]["combos"]["cat"]["delta_max_abs_diff"] < 1e-4 * ex["3"]["facts"]["delta_size"]
    assert ex["3"]["facts"]["combos"]["cat"]["logits_vs_output_average"] > 0  # weights averaged != outputs
    d_ret, d_acc = ex["4"]["answer"]
    assert_exercises(res, wrong={
        1: "q_proj,v_proj" if ex["1"]["answer"] == "all-linear" else "all-linear",
        2: "more" if ex["2"]["answer"] == "less" else "less",
        3: "linear",
        4: [d_ret + 0.5, d_acc]})
