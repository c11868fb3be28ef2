"""05 · QLoRA, run headless with its smoke parameters; assertions on what it recorded."""

import pytest
from conftest import assert_exercises, recorded_run

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

recorded = recorded_run("05_qlora")


def test_the_base_is_4_bit_the_adapters_are_not(recorded):
    tmp_path, _, res = recorded
    # the base is 4-bit, the adapters are not (the seed says QLoRA quantizes A and B: it does not)
    assert res["weights_by_dtype"]["uint8"] > 0 and res["quant_constants"] > 0
    assert res["adapters_quantized"] is False
    assert res["adapter_dtypes"]["lora_A"]["dtype"] == "float32" and res["adapter_dtypes"]["lora_A"]["trainable"]
    assert res["adapter_dtypes"]["lora_B"]["dtype"] == "float32"
    assert res["adapter_dtypes"]["4-bit base weight"]["trainable"] is False


def test_the_4_bit_bases_own_weight_memory(recorded):
    tmp_path, _, res = recorded
    # the 4-bit base's own weight memory, without the adapters (fp32 on a CPU: 4 bytes each)
    row = res["overview_row"]
    assert row["base_weight_memory_mb"] == res["base_weight_mb"]
    assert row["weight_memory_mb"] - res["base_weight_mb"] == pytest.approx(res["trainable"] * 4 / 1e6, rel=0.02)


def test_qlora_trains_exactly_loras_parameters(recorded):
    tmp_path, _, res = recorded
    # QLoRA trains exactly LoRA's parameters at the same rank
    assert res["trainable"] == res["lora_trainable"]
    assert res["trainable_share"] == pytest.approx(res["lora_trainable_share"], rel=1e-6)


def test_the_loss_falls(recorded):
    tmp_path, _, res = recorded
    # training works: the loss falls (the smoke run trains tiny-llama, whose exact match stays
    # at 0; that QLoRA raises it on the bundled model: tests/test_train.py)
    assert res["train_loss"][-1] < res["train_loss"][0]


def test_checkpointing_and_kbit_preparation_as_measured(recorded):
    tmp_path, _, res = recorded
    # gradient checkpointing trades activations for time (on tiny-llama little: the logits over its
    # 49,152-token vocabulary, which it keeps, are most of them); kbit preparation upcasts 16-bit leftovers
    steps = res["step_configs"]
    assert steps["prepared + checkpointing"]["ledger"]["activations"] < steps["prepared"]["ledger"]["activations"]
    assert steps["prepared"]["ledger"]["weights"] == steps["no preparation"]["ledger"]["weights"]  # fp32 on a CPU already
    assert res["upcast_mb"] > 0
    # what prepare_model_for_kbit_training does with the kit's arguments (use_reentrant=False):
    # no checkpointing unless asked, no embedding hook from peft; peft's default turns both on
    calls = res["kbit_calls"]
    assert all(c["all_frozen"] for c in calls.values())
    assert calls["peft's default call"] == {"all_frozen": True, "embedding_output_requires_grad": True,
                                            "gradient_checkpointing": True}
    kit_off, kit_on = (calls[f"the kit's call (gradient_checkpointing={v})"] for v in (False, True))
    assert kit_off["gradient_checkpointing"] is False and kit_off["embedding_output_requires_grad"] is False
    assert kit_on["gradient_checkpointing"] is True
    assert kit_on["embedding_output_requires_grad"] is True     # transformers' checkpointing adds the hook
    for label, step in steps.items():                             # every setup trains the adapters
        assert step["lora_b_moved_share"] == 1.0, label


def test_one_run_states_its_interval(recorded):
    tmp_path, _, res = recorded
    # one run states its interval
    low, high = res["accuracy_after_interval"]
    assert low <= res["accuracy_after"] <= high and high - low > 0.1
    assert res["correct_after"] == round(res["accuracy_after"] * res["n_test"])


def test_nf4_damages_the_weights_less_than_fp4(recorded):
    tmp_path, _, res = recorded
    # NF4 damages the weights less than FP4
    q = res["quant_compare"]
    assert 0 < q["nf4"]["relative_weight_mse"] < q["fp4"]["relative_weight_mse"]


def test_merging_into_the_dequantized_base_matches_requantizing_rounds(recorded):
    tmp_path, _, res = recorded
    # merge: dequantize + add matches the adapter model; re-quantizing rounds again
    merge = res["merge"]
    assert merge["merged, fp32"]["max_logit_diff"] < 1e-2
    assert merge["merged, re-quantized to NF4"]["max_logit_diff"] > 10 * merge["merged, fp32"]["max_logit_diff"]
    # why: most update entries are below half an NF4 step, and re-quantizing snaps them back
    rounding = res["merge_rounding"]
    assert rounding["update_entries"] > 5e4                          # every adapted weight entry (tiny-llama: 73,728)
    assert rounding["below_half_step_share"] > 0.5
    assert rounding["codes_unchanged_share"] == pytest.approx(rounding["below_half_step_share"], abs=0.02)
    # (that the re-quantized model then sits closer to the base than to the adapter model holds
    # for the bundled model's update, not for tiny-llama's: tests/test_train.py asserts it there)
    assert rounding["requantized_vs_base_max_logit_diff"] > 0


def test_its_overview_row_and_figures(recorded):
    tmp_path, _, res = recorded
    row = res["overview_row"]
    assert row["method"] == "qlora"
    for key in ("trainable_share", "weight_memory_mb", "train_memory_mb", "step_time_s", "accuracy_before",
                "accuracy_after", "retention_before", "retention_after"):
        assert isinstance(row[key], (int, float)), key
    # under fp32's weights (tiny-llama's fp32 embedding is most of its weights, so not by much here;
    # the bundled model's 4-bit footprint: tests/test_models.py)
    assert row["weight_memory_mb"] < res["parameters"] * 4 / 1e6
    for name in ("05_prepare_checkpointing", "05_loss_curves"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 5_000


def test_the_exercises_check_both_ways(recorded):
    tmp_path, _, res = recorded
    # the exercises: each check passes with its solution, fails unanswered and with a wrong answer
    ex = {int(k): v for k, v in res["exercises"].items()}
    val_loss = ex[1]["facts"]["val_loss"]
    small = ex[2]["facts"]["per_rank"][str(ex[2]["facts"]["ranks"][0])]
    assert ex[2]["facts"]["per_rank"]["64"]["trainable"] == 8 * small["trainable"]   # linear in r
    assert ex[3]["facts"]["optimizer"] == "paged_adamw_8bit" and ex[3]["facts"]["compute_dtype"] == "float16"
    assert_exercises(res, wrong={1: max(val_loss, key=val_loss.get),
                                 2: (small["gradients_mb"] + small["adam_mb"]) / res["base_weight_mb"],
                                 3: ("adamw_torch", "bfloat16"), 4: not ex[4]["facts"]["reached"]})
    if ex[4]["facts"]["native"]:                     # an AVX512-BF16 CPU: the repacking cuts the gradient
        assert ex[4]["facts"]["reached"] is False
