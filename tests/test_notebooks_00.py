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
    ratio = res["footprint_ratio"]
    assert 0.45 < ratio["bf16"] < 0.55                  # 2 bytes instead of 4
    assert ratio["nf4"] < 1 / 3                         # 4-bit codes + constants, fp32 embedding
    assert (tmp_path / "figures" / "00_footprints.png").stat().st_size > 5_000
    assert_exercises(res, wrong={1: 0.5, 2: 500.0, 3: "bfloat16"})
