"""08 · Your own data, run headless with its smoke parameters (the bundled SmolLM2-135M, so that the
TRL parity is tested on a trained model, not a random one); assertions on what it
recorded: the three formats, the loss mask of a multi-turn conversation, padding, the same run in
TRL, the chat, and what it ships loading in plain transformers and peft."""
import pytest
from conftest import assert_exercises, recorded_run

from kit.engine.train import PARITY_TOLERANCE

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

recorded = recorded_run("08_your_own_data")


def test_three_formats_are_detected_and_a_bad_row_is_named(recorded):
    _, _, res = recorded
    kinds = {name: f["format"] for name, f in res["formats"].items()}
    assert kinds == {"chat.jsonl": "conversation", "alpaca.jsonl": "alpaca", "pairs.jsonl": "prompt/response"}
    assert res["formats"]["chat.jsonl"]["columns"] == ["messages"]
    assert "row 2" in res["malformed_error"] and "ends on a user turn" in res["malformed_error"]


def test_only_the_assistant_turns_are_trained(recorded):
    _, _, res = recorded
    mask = res["mask"]
    assert mask["loss_tokens"] == mask["assistant_tokens"] and mask["assistant_turns"] >= 2


def test_grouping_by_length_pads_less(recorded):
    _, _, res = recorded
    assert res["padding"]["group_by_length"]["padding"] < res["padding"]["random"]["padding"]


def test_trl_computes_the_kits_losses(recorded):
    _, _, res = recorded
    for method in ("lora", "qlora"):                       # the kit's loop and TRL's SFTTrainer agree
        p = res["parity"][method]
        assert len(p["kit"]) == len(p["trl"]) >= 2 and p["max_rel_diff"] < PARITY_TOLERANCE, (method, p)


def test_the_merged_model_answers_as_the_adapter_does(recorded):
    _, _, res = recorded
    assert set(res["replies"]) == {"base", "default", "merged"}
    assert res["replies"]["merged"] == res["replies"]["default"]


def test_what_it_ships_loads_in_plain_transformers_and_peft(recorded):
    _, _, res = recorded
    s = res["shipped"]
    assert s["adapter_max_diff"] < 1e-5                    # plain peft loads the adapter
    assert s["merged_weights_equal"] and s["merged_dtype"] == "bfloat16"   # plain transformers loads what was saved
    assert s["merged_reload_max_diff"] < 1e-6, s      # ... and computes what the merged bf16 model computes
    # merged = unmerged up to fp32 rounding on logits of size 10-30 (about 1e-4 on the bundled model)
    assert s["merge_max_diff"] < 5e-4 and s["qlora_merge_max_diff"] < 5e-4


def test_the_exercises_check_both_ways(recorded):
    _, _, res = recorded
    assert_exercises(res, wrong={1: 1, 2: 0.99, 3: False})
