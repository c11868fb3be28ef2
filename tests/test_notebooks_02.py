"""02 · LoRA from scratch, run headless with its smoke parameters; assertions on what it recorded."""

import pytest

from conftest import run_notebook


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run02")
    return folder, run_notebook("02_lora_from_scratch", folder)


@pytest.mark.notebook
@pytest.mark.slow
def test_b_zero_leaves_the_model_unchanged(recorded):
    _, res = recorded
    assert res["b0_layer_max_abs_diff"] == 0.0        # one layer, B = 0: exactly W X
    assert res["b0_model_max_abs_diff"] == 0.0        # the whole model's logits
    assert res["peft"]["b0_max_abs_diff"] == 0.0      # peft starts at B = 0 too
    assert res["formula_max_abs_diff"] < 1e-4         # LoRA(X) == (W + s B A) X + b


@pytest.mark.notebook
@pytest.mark.slow
def test_merge_and_unmerge_keep_the_outputs(recorded):
    _, res = recorded
    assert res["adapter_effect_max_abs"] > 0.1        # a non-zero B really changes the model
    assert res["merge_max_abs_diff"] < 1e-3 * res["adapter_effect_max_abs"] + 1e-4
    assert res["unmerge_max_abs_diff"] < 1e-3 * res["adapter_effect_max_abs"] + 1e-4
    assert res["unmerge_weight_max_abs_diff"] < 1e-5


@pytest.mark.notebook
@pytest.mark.slow
def test_peft_agrees_with_the_kit(recorded):
    _, res = recorded
    peft = res["peft"]
    assert peft["counts_agree"] and peft["counts"] == peft["kit_counts"]
    counts = res["counts_by_rank"]["all linear layers"]
    assert counts["2"] == 2 * counts["1"] and counts["64"] == 64 * counts["1"]  # linear in r
    assert res["trainable"] == counts[str(res["rank"])]
    assert peft["delta_weight_max_abs_diff"] < 1e-6
    assert peft["output_max_abs_diff"] < 1e-3 * res["adapter_effect_max_abs"] + 1e-4
    assert peft["merge_max_abs_diff"] < 1e-3 * res["adapter_effect_max_abs"] + 1e-4


@pytest.mark.notebook
@pytest.mark.slow
def test_a_real_update_is_nearly_low_rank(recorded):
    folder, res = recorded
    for share in res["energy_top_r"].values():
        assert share > 3 * res["energy_top_r_random"]   # far more than a random matrix keeps
    assert res["loss_full_update"] < res["loss_base"]
    by_rank = {x["r"]: x["val_loss"] for x in res["truncation"]}
    assert by_rank[max(by_rank)] < res["loss_base"]    # a rank-64 cut keeps the improvement
    for name in ("02_params_vs_rank", "02_singular_values", "02_truncation_loss"):
        assert (folder / "figures" / f"{name}.png").stat().st_size > 5_000
