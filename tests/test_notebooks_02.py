"""02 · LoRA from scratch, run headless with its smoke parameters; assertions on what it recorded."""
import json

import pytest
from conftest import assert_exercises, recorded_run, run_notebook

from kit.commands.runner import NOTEBOOKS, smoke_parameters

NB = NOTEBOOKS / "02_lora_from_scratch.ipynb"


pytestmark = [pytest.mark.notebook, pytest.mark.slow]

recorded = recorded_run("02_lora_from_scratch")


def test_b_zero_leaves_the_model_unchanged(recorded):
    _, _, res = recorded
    assert res["b0_layer_max_abs_diff"] == 0.0        # one layer, B = 0: exactly W X
    assert res["b0_block_max_abs_diff"] == 0.0        # q_proj and v_proj of one block, by hand
    assert res["b0_model_max_abs_diff"] == 0.0        # the whole model's logits
    assert res["kit_lora"]["b0_max_abs_diff"] == 0.0  # kit.scratch.lora starts at B = 0
    assert res["peft"]["b0_max_abs_diff"] == 0.0      # peft starts at B = 0 too
    assert res["formula_max_abs_diff"] < 1e-4         # LoRA(X) == (W + s B A) X + b


def test_the_hand_written_layer_counts_and_merges(recorded):
    _, _, res = recorded
    counts = res["counts_by_rank"]
    rank = str(res["rank"])
    assert res["block_trainable"] * res["layers"] == counts["q_proj, v_proj"][rank]  # one block of 30
    assert res["trainable"] == res["closed_form_trainable"] == counts["all linear layers"][rank]
    assert res["adapter_effect_max_abs"] > 0.1        # a non-zero B really changes the model
    assert res["merge_max_abs_diff"] < 1e-3 * res["adapter_effect_max_abs"] + 1e-4
    assert res["unmerge_max_abs_diff"] < 1e-3 * res["adapter_effect_max_abs"] + 1e-4
    assert res["unmerge_weight_max_abs_diff"] < 1e-5


def test_the_kit_and_peft_agree_with_the_hand_written_layer(recorded):
    _, _, res = recorded
    effect = res["adapter_effect_max_abs"]
    kit = res["kit_lora"]
    assert kit["names_agree"]                          # inject wraps the layers add_lora wraps
    assert kit["delta_weight_max_abs_diff"] < 1e-6
    assert kit["output_max_abs_diff"] < 1e-5 * effect  # the same computation: equal up to rounding
    assert kit["merge_max_abs_diff"] < 1e-3 * effect + 1e-4
    peft = res["peft"]
    assert peft["counts_agree"] and peft["counts"] == peft["kit_counts"]
    counts = res["counts_by_rank"]["all linear layers"]
    assert counts["2"] == 2 * counts["1"] and counts["64"] == 64 * counts["1"]  # linear in r
    assert res["trainable"] == counts[str(res["rank"])]
    assert peft["delta_weight_max_abs_diff"] < 1e-6
    assert peft["output_max_abs_diff"] < 1e-3 * effect + 1e-4
    assert peft["merge_max_abs_diff"] < 1e-3 * effect + 1e-4


def test_a_real_update_is_nearly_low_rank(recorded):
    folder, _, res = recorded
    params = smoke_parameters(NB)
    assert res["update_source"] == "here" and res["task_of_update"] == "dates"  # no 01 in this folder
    assert res["update_steps"] == params["SVD_STEPS"]
    assert res["n_val_scored"] == params["N_VAL"]
    for share in res["energy_top_r"].values():
        assert share > 3 * res["energy_top_r_random"]   # far more than a random matrix keeps
    assert res["loss_full_update"] < res["loss_base"]
    by_rank = {x["r"]: x["val_loss"] for x in res["truncation"]}
    assert by_rank[max(by_rank)] < res["loss_base"]    # a rank-64 cut keeps the improvement
    for name in ("02_params_vs_rank", "02_singular_values", "02_truncation_loss"):
        assert (folder / "figures" / f"{name}.png").stat().st_size > 5_000


def test_exercises(recorded):
    _, _, res = recorded
    facts = res["exercises"]["3"]["facts"]
    layer, longer = res["exercises"]["3"]["answer"]
    rising = facts["energy_by_step"][-1] > facts["energy_by_step"][0]
    assert_exercises(res, wrong={1: ["b0_diff", "effect"], 2: 552_960,   # 2: v_proj taken as 576 x 576
                                 3: [layer, "less" if rising else "more"]})
    from kit.view import check  # and the other half of exercise 3's answer
    assert check.check_of("02", 3)(["last" if layer == "first" else "first", longer], **facts) is False


def test_an_update_from_01_is_scored_on_01s_task(tmp_path, tiny):
    """With 01's checkpoint in the run folder, the update is 01's (its task and steps, not
    SVD_STEPS) and the losses are scored on 01's own validation examples of that task (on
    tiny-llama: what is checked is which update and which examples, not its rank)."""
    from kit.engine.adapters import save_full
    from kit.engine.data import make_task, pad_token_id, tokenize
    from kit.engine.evaluate import validation_loss
    from kit.engine.train import finetune

    model, tokenizer = tiny
    split = {"n_train": 8, "n_val": 4, "n_test": 4, "seed": 0}
    data = make_task("extract", **split)
    base_loss = validation_loss(model, tokenize(data["validation"], tokenizer), pad_token_id(tokenizer))["loss"]
    run = finetune(model, tokenizer, data, method="full", max_steps=1, per_device_train_batch_size=2,
                   learning_rate=2e-5, eval_steps=0, disable_tqdm=True)
    save_full(run.model, tmp_path / "checkpoints" / "01_full")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "01_full_finetuning.json").write_text(json.dumps(
        {"notebook": "01_full_finetuning", "model": "tiny-llama", "task": "extract", "steps": 1, "lr": 2e-5, **split}))

    res = run_notebook("02_lora_from_scratch", tmp_path, EXERCISES=False, MODEL="tiny-llama")
    assert res["update_source"] == "01" and res["task_of_update"] == "extract"
    assert res["update_steps"] == 1 != smoke_parameters(NB)["SVD_STEPS"]
    assert res["n_val_scored"] == 4
    assert res["loss_base"] == pytest.approx(base_loss, rel=1e-5)   # 01's validation examples, not dates
