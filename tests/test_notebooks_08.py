"""08 · Your own data, run headless with its smoke parameters (the bundled SmolLM2-135M, so that the
TRL parity is tested on a trained model, not a random one); assertions on what it
recorded: the three formats, the loss mask of a multi-turn conversation, padding, the same run in
TRL, the chat, and what it ships loading in plain transformers and peft."""
import pytest

from kit.engine.train import PARITY_TOLERANCE
from conftest import assert_exercises, run_notebook


@pytest.mark.notebook
@pytest.mark.slow
def test_your_own_data_notebook(tmp_path):
    res = run_notebook("08_your_own_data", tmp_path)
    kinds = {name: f["format"] for name, f in res["formats"].items()}
    assert kinds == {"chat.jsonl": "conversation", "alpaca.jsonl": "alpaca", "pairs.jsonl": "prompt/response"}
    assert res["formats"]["chat.jsonl"]["columns"] == ["messages"]
    assert "row 2" in res["malformed_error"] and "ends on a user turn" in res["malformed_error"]
    mask = res["mask"]
    assert mask["loss_tokens"] == mask["assistant_tokens"] and mask["assistant_turns"] >= 2
    assert res["padding"]["group_by_length"]["padding"] < res["padding"]["random"]["padding"]
    for method in ("lora", "qlora"):                       # the kit's loop and TRL's SFTTrainer agree
        p = res["parity"][method]
        assert len(p["kit"]) == len(p["trl"]) >= 2 and p["max_rel_diff"] < PARITY_TOLERANCE, (method, p)
    assert set(res["replies"]) == {"base", "default", "merged"}
    assert res["replies"]["merged"] == res["replies"]["default"]
    s = res["shipped"]
    assert s["adapter_max_diff"] < 1e-5                    # plain peft loads the adapter
    assert s["merged_weights_equal"] and s["merged_dtype"] == "bfloat16"   # plain transformers loads what was saved
    assert s["merged_reload_max_diff"] < 1e-6, s      # ... and computes what the merged bf16 model computes
    # merged = unmerged up to fp32 rounding on logits of size 10-30 (about 1e-4 on the bundled model)
    assert s["merge_max_diff"] < 5e-4 and s["qlora_merge_max_diff"] < 5e-4
    assert_exercises(res, wrong={1: 1, 2: 0.99, 3: False})
