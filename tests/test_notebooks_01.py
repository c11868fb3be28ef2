"""01 · Full fine-tuning, run headless with its smoke parameters; assertions on what it recorded."""

import math

import pytest
from conftest import assert_exercises, recorded_run

from kit.scratch.stats import wilson

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

recorded = recorded_run("01_full_finetuning")


def test_the_loop_written_out_computes_what_the_kit_computes(recorded):
    _, _, res = recorded
    loop = res["inline_loop"]
    assert len(loop["losses_inline"]) == len(loop["losses_kit"]) == loop["steps"] >= 2
    assert all(math.isfinite(x) and x > 0 for x in loop["losses_inline"])
    assert loop["losses_inline"] == loop["losses_kit"]            # identical, bit for bit
    assert loop["max_abs_diff"] == 0.0
    assert loop["schedule_matches"] is True                       # the schedule written out == kit.engine.train.lr_at


def test_every_parameter_trains_and_the_ledger_shows_it(recorded):
    _, _, res = recorded
    assert res["trainable"] == res["parameters"] and res["trainable_share"] == 1.0
    ledger = res["ledger"]
    assert ledger["gradients"] == ledger["weights"]             # one fp32 gradient per fp32 weight
    assert ledger["optimizer"] >= 2 * ledger["weights"]         # Adam: two moments per weight
    assert 15.9 < res["bytes_per_param_states"] < 16.2          # 4 + 4 + 8 bytes in fp32
    assert ledger["activations"] > 0 and res["step_time_s"] > 0


def test_losses_are_recorded_per_evaluation(recorded):
    _, params, res = recorded
    steps, every = params["STEPS"], params["EVAL_EVERY"]
    assert len(res["train_loss"]) == steps
    assert [e["step"] for e in res["evals"]] == list(range(0, steps + 1, every))  # 0, every, ..., end
    assert len(res["val_losses"]) == len(res["evals"])
    assert min(res["val_losses"][1:]) < res["val_losses"][0]     # training lowered the validation loss
    assert res["best_eval_step"] in [e["step"] for e in res["evals"]]


def test_accuracy_retention_estimate_and_overview(recorded):
    folder, _, res = recorded
    for key in ("accuracy_before", "accuracy_after", "retention_before", "retention_after"):
        assert 0.0 <= res[key] <= 1.0
    est = res["estimate_7b"]["mixed precision (AMP)"]
    states = est["weights"] + est["gradients"] + est["optimizer"]
    assert 15.9 < states / res["params_7b"] < 16.1              # 16 bytes per parameter
    assert est["total"] / 1e9 > res["seed_7b_gb"]               # more than the seed's 60 GB
    row = res["overview_row"]
    assert row["method"] == "full" and row["trainable_share"] == 1.0
    assert row["train_memory_mb"] > 3 * row["weight_memory_mb"]
    for name in ("01_memory_ledger", "01_loss_curves", "01_estimate_7b"):
        assert (folder / "figures" / f"{name}.png").stat().st_size > 5_000
    if res["checkpoint_mb"] is not None:
        assert (folder / "checkpoints" / "01_full" / "model.safetensors").exists()


def test_the_accuracy_states_its_interval(recorded):
    _, params, res = recorded
    assert res["test_total"] == params["N_TEST"]
    for when in ("before", "after"):
        low, high = res[f"accuracy_interval_{when}"]
        assert (low, high) == pytest.approx(wilson(res[f"correct_{when}"], res["test_total"]))
        assert low <= res[f"accuracy_{when}"] <= high
        assert high - low > 0.1                                 # a few test items: a wide interval


def test_exercises_check_both_ways(recorded):
    _, _, res = recorded
    assert_exercises(res, wrong={1: [True, "rises"], 2: [25.5, 0.63], 3: [["activations", "logits"], 64]})
