"""04 · Quantization, run headless with its smoke parameters; assertions on what it recorded."""

import pytest
from conftest import assert_exercises, recorded_run

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

recorded = recorded_run("04_quantization")


def test_int8_absmax_by_hand_equals_the_kit_and_bitsandbytes(recorded):
    tmp_path, _, res = recorded
    # the notebook's absmax int8 (per tensor, per row) is kit.scratch.quant's and bitsandbytes' (per row)
    i8 = res["int8_check"]
    for key in ("tensor_codes_equal_kit", "rows_codes_equal_kit", "rows_dequant_equal_kit",
                "rows_scale_equal_bnb", "rows_codes_equal_bnb_order"):
        assert i8[key] is True, key
    # bitsandbytes rounds x * (127 / absmax): a few codes of the layer land one step away
    assert i8["rows_codes_equal_share_bnb"] > 0.9999 and i8["rows_codes_max_diff_bnb"] <= 1
    assert i8["per_row_mse"] < i8["per_tensor_mse"]


def test_nf4_from_normal_quantiles_is_the_kits_and_bitsandbytes(recorded):
    tmp_path, _, res = recorded
    # code books: the notebook's NF4 from normal quantiles is the kit's and bitsandbytes'; its E2M1
    # is the kit's "fp4"; bitsandbytes' FP4 differs from E2M1 in its smallest level (+ and -)
    cb = res["codebook_check"]
    assert cb["nf4_equal_kit"] is True and cb["nf4_equal_bnb"] is True and cb["e2m1_equal_kit"] is True
    assert cb["fp4_levels_differing"] == 2
    assert cb["fp4_smallest_nonzero"]["E2M1"] == pytest.approx(1 / 12)
    assert cb["fp4_smallest_nonzero"]["bitsandbytes"] == pytest.approx(1 / 192)


def test_the_kits_nf4_is_bitsandbytes_nf4_bit_for_bit(recorded):
    tmp_path, _, res = recorded
    # the kit's NF4 is bitsandbytes' NF4: same levels, same codes, same dequantized weights
    check = res["nf4_check"]
    assert check["codebook_equal"] is True
    assert check["codes_equal_share"] == 1.0
    assert check["dequant_max_abs_diff"] == 0.0
    assert check["loaded_layer_type"] == "Linear4bit"
    assert check["loaded_codes_equal_share"] == 1.0            # the model bnb loaded holds our codes
    assert check["loaded_vs_ours_mse"] < 0.05 * check["ours_vs_fp32_mse"]
    # the notebook's blockwise quantize/dequantize equals both, bit for bit
    for key in ("notebook_codes_equal_kit", "notebook_codes_equal_bnb", "notebook_absmax_equal_bnb",
                "notebook_dequant_equal_kit", "notebook_dequant_equal_bnb"):
        assert check[key] is True, key
    assert all(v is True for v in res["fp4_check"].values()), res["fp4_check"]


def test_error_falls_about_6_db_per_bit(recorded):
    tmp_path, _, res = recorded
    # error falls as bits rise (and about 6 dB per bit once the grid is fine)
    sweep = sorted(res["bits_sweep"], key=lambda r: r["bits"])
    assert [r["bits"] for r in sweep] == list(range(2, 9))
    mses = [r["mse"] for r in sweep]
    assert all(a > b for a, b in zip(mses, mses[1:])), mses
    assert 5.0 < sweep[-1]["sqnr_db"] - sweep[-2]["sqnr_db"] < 7.0
    memory = [r["model_weights_mb"] for r in sweep]
    assert all(a < b for a, b in zip(memory, memory[1:]))


def test_blockwise_beats_per_tensor_and_double_quant_costs_4_127_bits(recorded):
    tmp_path, _, res = recorded
    # blockwise beats one absmax per tensor; double quantization: 4.5 -> about 4.127 bits
    by = {(r["blocksize"], r["kind"]): r for r in res["blocksize_sweep"]}
    assert by[("64", "nf4")]["mse"] < by[("tensor", "nf4")]["mse"] / 5
    assert res["int4_zero_share_per_tensor"] > res["int4_zero_share_blockwise"]
    dq = res["double_quant"]
    assert dq["plain_bits_per_param"] == pytest.approx(4.5)
    assert dq["double_bits_per_param"] == pytest.approx(4.127, abs=0.002)
    assert dq["bnb_double_bits_per_param"] == pytest.approx(dq["double_bits_per_param"], abs=0.002)


def test_nf4_has_the_smallest_4_bit_error(recorded):
    tmp_path, _, res = recorded
    # NF4 has the smallest error of the 4-bit code books on real weights, both FP4s included
    fe = res["format_errors"]
    assert set(fe) == {"int4", "FP4 (E2M1)", "FP4 (bitsandbytes)", "NF4"}
    assert fe["NF4"] < fe["FP4 (E2M1)"] and fe["NF4"] < fe["FP4 (bitsandbytes)"] and fe["NF4"] < fe["int4"]
    assert fe["FP4 (E2M1)"] < fe["FP4 (bitsandbytes)"]          # 1/192 is nearly a second zero


def test_a_4_bit_model_takes_under_a_third_and_2_bits_break_it(recorded):
    tmp_path, _, res = recorded
    # whole model: the 4-bit model's weights take less than a third of fp32's; 2 bits break it
    rows = {r["format"]: r for r in res["whole_model"]}
    assert rows["nf4"]["weights_mb"] < rows["fp32"]["weights_mb"] / 3
    assert res["nf4_weight_ratio"] < 1 / 3
    assert rows["bf16"]["weights_mb"] == pytest.approx(rows["fp32"]["weights_mb"] / 2, rel=0.01)
    assert rows["nf4 (fake)"]["loss"] == pytest.approx(rows["nf4"]["loss"], rel=0.1)
    assert rows["int2 (fake)"]["loss"] > rows["nf4"]["loss"] > rows["fp32"]["loss"] * 0.95
    for name in ("04_codebooks", "04_blocksize", "04_bits", "04_formats", "04_whole_model"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 5_000


def test_the_exercises_check_both_ways(recorded):
    tmp_path, _, res = recorded
    # the exercises: each check passes with its solution, fails unanswered and with a wrong answer
    ex = {int(k): v for k, v in res["exercises"].items()}
    down_proj_gain = ex[1]["facts"]["layers"][res["layer"]]["gain_db"]
    perplexity = ex[3]["facts"]["perplexity"]
    assert abs(down_proj_gain - ex[1]["facts"]["layers"][ex[1]["facts"]["layer"]]["gain_db"]) > 1.0
    assert ex[2]["facts"]["measured"]["256"]["double_bits"] == pytest.approx(4 + 8 / 256 + 32 / 256**2, abs=0.002)
    assert ex[4]["facts"]["off"]["576"] == 0.0        # 9 whole blocks of 64: exact on every CPU
    assert_exercises(res, wrong={1: down_proj_gain, 2: {32: 5.0, 256: 4.125},
                                 3: max(perplexity, key=perplexity.get), 4: [576]})
