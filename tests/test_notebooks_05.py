"""05 · QLoRA, run headless with its smoke parameters; assertions on what it recorded."""

import pytest

from conftest import run_notebook


@pytest.mark.notebook
@pytest.mark.slow
def test_qlora_notebook(tmp_path):
    res = run_notebook("05_qlora", tmp_path)

    # the base is 4-bit, the adapters are not (the seed says QLoRA quantizes A and B: it does not)
    assert res["weights_by_dtype"]["uint8"] > 0 and res["quant_constants"] > 0
    assert res["adapters_quantized"] is False
    assert res["adapter_dtypes"]["lora_A"]["dtype"] == "float32" and res["adapter_dtypes"]["lora_A"]["trainable"]
    assert res["adapter_dtypes"]["lora_B"]["dtype"] == "float32"
    assert res["adapter_dtypes"]["4-bit base weight"]["trainable"] is False

    # QLoRA trains exactly LoRA's parameters at the same rank
    assert res["trainable"] == res["lora_trainable"]
    assert res["trainable_share"] == pytest.approx(res["lora_trainable_share"], rel=1e-6)

    # training works: the loss falls and accuracy beats the 4-bit base
    assert res["train_loss"][-1] < res["train_loss"][0]
    assert res["accuracy_after"] > res["accuracy_before"]

    # gradient checkpointing trades activations for time; kbit preparation upcasts 16-bit leftovers
    steps = res["step_configs"]
    assert steps["prepared + checkpointing"]["ledger"]["activations"] < steps["prepared"]["ledger"]["activations"] / 2
    assert steps["prepared"]["ledger"]["weights"] == steps["no preparation"]["ledger"]["weights"]  # fp32 on a CPU already
    assert res["upcast_mb"] > 0

    # NF4 damages the weights less than FP4
    q = res["quant_compare"]
    assert 0 < q["nf4"]["relative_weight_mse"] < q["fp4"]["relative_weight_mse"]

    # merge: dequantize + add matches the adapter model; re-quantizing rounds again
    merge = res["merge"]
    assert merge["merged, fp32"]["max_logit_diff"] < 1e-2
    assert merge["merged, re-quantized to NF4"]["max_logit_diff"] > 10 * merge["merged, fp32"]["max_logit_diff"]

    row = res["overview_row"]
    assert row["method"] == "qlora"
    for key in ("trainable_share", "weight_memory_mb", "train_memory_mb", "step_time_s", "accuracy_before",
                "accuracy_after", "retention_before", "retention_after"):
        assert isinstance(row[key], (int, float)), key
    assert row["weight_memory_mb"] < res["parameters"] * 4 / 1e6 / 2       # well under fp32's weights
    for name in ("05_prepare_checkpointing", "05_loss_curves"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 5_000
