"""00 · Setup, run headless with its smoke parameters; assertions on what it recorded."""

import pytest
from conftest import assert_exercises, recorded_run

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

recorded = recorded_run("00_setup")


def test_the_bundled_model_answers_offline(recorded):
    _, _, res = recorded
    assert "Paris" in res["answer"]
    assert res["parameters"] == 134_515_008
    assert res["device"]["compute_dtype"] in ("float32", "float16", "bfloat16")


def test_bitsandbytes_4_bit_is_checked_on_this_cpu(recorded):
    _, _, res = recorded
    check = res["bnb_4bit_check"]             # bitsandbytes against kit.scratch.quant and a backward pass
    assert check["status"] in ("exact", "worked around") and all(p["ok"] for p in check["probes"])
    assert check["line"].startswith("bitsandbytes 4-bit on this CPU: ")


def test_16_bits_halve_the_weights_and_4_bits_take_under_a_third(recorded):
    folder, _, res = recorded
    ratio = res["footprint_ratio"]
    assert 0.45 < ratio["bf16"] < 0.55                  # 2 bytes instead of 4
    assert ratio["nf4"] < 1 / 3                         # 4-bit codes + constants, fp32 embedding
    assert (folder / "figures" / "00_footprints.png").stat().st_size > 5_000


def test_4_bits_is_not_one_eighth_what_stays_unquantized(recorded):
    _, _, res = recorded
    share = res["unquantized_share"]                    # embedding, norms, untied head
    assert share["llama-2-7b"] == pytest.approx(0.039, abs=0.002)      # embedding + untied head
    assert share["qwen2.5-7b"] == pytest.approx(0.143, abs=0.005)      # a 152k vocabulary, twice
    assert share["smollm2-135m"] == pytest.approx(res["embedding_parameters"] / res["parameters"], abs=0.001)


def test_fp16_underflows_where_bf16_does_not(recorded):
    _, _, res = recorded
    fp16 = res["formats"]["float16"]
    assert fp16["smallest_normal"] == pytest.approx(6.1e-5, rel=0.01)  # subnormal below this
    assert fp16["smallest_subnormal"] == pytest.approx(6.0e-8, rel=0.01)  # zero below this
    assert res["formats"]["bfloat16"]["smallest_normal"] == res["formats"]["float32"]["smallest_normal"]


def test_the_exercises_check_both_ways(recorded):
    _, _, res = recorded
    assert_exercises(res, wrong={1: 0.5, 2: 500.0, 3: "bfloat16"})
