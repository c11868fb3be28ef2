"""00 · Setup, run headless with its smoke parameters; assertions on what it recorded."""

import pytest

from conftest import assert_exercises, run_notebook


@pytest.mark.notebook
@pytest.mark.slow
def test_setup_notebook_preflight(tmp_path):
    res = run_notebook("00_setup", tmp_path)
    assert "Paris" in res["answer"]
    assert res["parameters"] == 134_515_008
    assert res["device"]["compute_dtype"] in ("float32", "float16", "bfloat16")
    check = res["bnb_4bit_check"]             # bitsandbytes against kit.scratch.quant and a backward pass
    assert check["status"] in ("exact", "worked around") and all(p["ok"] for p in check["probes"])
    assert check["line"].startswith("bitsandbytes 4-bit on this CPU: ")
    ratio = res["footprint_ratio"]
    assert 0.45 < ratio["bf16"] < 0.55                  # 2 bytes instead of 4
    assert ratio["nf4"] < 1 / 3                         # 4-bit codes + constants, fp32 embedding
    assert (tmp_path / "figures" / "00_footprints.png").stat().st_size > 5_000
    # 4 bits is not one eighth: what bitsandbytes leaves unquantized (embedding, norms, untied head)
    share = res["unquantized_share"]
    assert share["llama-2-7b"] == pytest.approx(0.039, abs=0.002)      # embedding + untied head
    assert share["qwen2.5-7b"] == pytest.approx(0.143, abs=0.005)      # a 152k vocabulary, twice
    assert share["smollm2-135m"] == pytest.approx(res["embedding_parameters"] / res["parameters"], abs=0.001)
    fp16 = res["formats"]["float16"]
    assert fp16["smallest_normal"] == pytest.approx(6.1e-5, rel=0.01)  # subnormal below this
    assert fp16["smallest_subnormal"] == pytest.approx(6.0e-8, rel=0.01)  # zero below this
    assert res["formats"]["bfloat16"]["smallest_normal"] == res["formats"]["float32"]["smallest_normal"]
    assert_exercises(res, wrong={1: 0.5, 2: 500.0, 3: "bfloat16"})
