"""The checks of notebook 04 (quantization): ex04_N(answer, **facts) -> bool, printing the verdict."""
from __future__ import annotations

from kit.view.check.common import close, run_first, verdict


def ex04_1(answer, layers: dict | None = None, layer: str | None = None) -> bool:
    if not layers or layer not in layers:
        return run_first(answer)
    q = layers[layer]
    others = [(n, v) for n, v in layers.items() if n != layer]
    compare = ""
    if others:
        name, o = others[0]
        same_order = (q["outlier_sigmas"] > o["outlier_sigmas"]) == (q["gain_db"] > o["gain_db"])
        compare = (f" On {name} ({o['outlier_sigmas']:.0f} standard deviations) blocks gained "
                   f"{o['gain_db']:.1f} dB: " + (
                       "the further out the largest weight, the more one absmax per tensor coarsens the "
                       "grid for all the others, and the more blocks give back." if same_order else
                       "here the single largest weight does not decide it alone: how many weights sit "
                       "far out matters too."))
    return verdict(close(answer, q["gain_db"], abs_tol=0.3),
                   f"{q['gain_db']:.1f} dB on {layer}, whose largest weight sits "
                   f"{q['outlier_sigmas']:.0f} standard deviations out ({q['sqnr_tensor_db']:.1f} dB per "
                   f"tensor, {q['sqnr_block_db']:.1f} dB per block).{compare}",
                   "subtract the q_proj's SQNR with one absmax per tensor from its SQNR per block "
                   "(both printed, in dB).", answer)


def ex04_2(answer, measured: dict | None = None) -> bool:
    if not measured or not {"32", "256"} <= set(measured):
        return run_first(answer)
    try:
        got = {int(k): v for k, v in dict(answer).items()}
    except (TypeError, ValueError):
        got = {}
    ok = answer is not None and all(close(got.get(bs), measured[str(bs)]["double_bits"], abs_tol=0.003)
                                    for bs in (32, 256))
    table = "; ".join(f"blocks of {bs}: {r['plain_bits']:.3f} bits plain, {r['double_bits']:.3f} with double "
                      f"quantization (mse {r['plain_mse']:.2e})" for bs, r in measured.items())
    saved = {bs: measured[bs]["plain_bits"] - measured[bs]["double_bits"] for bs in ("32", "256")}
    return verdict(ok, f"4 + 8/g + 32/(256 g), plus 32 bits for the mean: {table}. The constants cost "
                       "32/g bits in fp32, so double quantization saves most where the blocks are small "
                       f"({saved['32']:.2f} bits at 32, {saved['256']:.2f} at 256), and smaller blocks give "
                       "less error.",
                   "with double quantization each block's absmax takes 8 bits (8/g per weight), plus one "
                   "fp32 constant per 256 absmax values (32/(256 g)), on top of the 4-bit code.", answer)


_FP4_NAMES = {"e2m1": "E2M1", "fp4 (e2m1)": "E2M1", "ocp": "E2M1", "mx": "E2M1", "kit": "E2M1",
              "bitsandbytes": "bitsandbytes", "bnb": "bitsandbytes", "fp4 (bitsandbytes)": "bitsandbytes"}


def ex04_3(answer, perplexity: dict | None = None, weight_error: dict | None = None,
           nf4_perplexity: float | None = None) -> bool:
    if not perplexity or not weight_error:
        return run_first(answer)
    name = _FP4_NAMES.get(str(answer).strip().lower()) if answer is not None else None
    lower = min(perplexity, key=perplexity.get)
    other = next(k for k in perplexity if k != lower)
    follows = min(weight_error, key=weight_error.get) == lower
    reading = ("the whole model follows the weight errors of section 8" if follows else
               "although its weights had the larger error in section 8: the weight error weighs every "
               "weight alike, the loss depends on which ones moved, and a few held-out answers are a small "
               "sample, so the ranking of the weight errors does not settle the ranking of the models")
    nf4 = f" NF4 gave {nf4_perplexity:.2f}." if nf4_perplexity else ""
    return verdict(name == lower,
                   f"{lower}: perplexity {perplexity[lower]:.2f} against {perplexity[other]:.2f}; {reading} "
                   f"(relative weight error E2M1 {weight_error['E2M1']:.4f}, bitsandbytes "
                   f"{weight_error['bitsandbytes']:.4f}).{nf4} bitsandbytes' level at 1/192 of the absmax is "
                   "almost a second zero: between it and 1/6 there is no level, where E2M1 has 1/12.",
                   'compare the two perplexities the cell printed and name the format with the lower '
                   'one: "E2M1" or "bitsandbytes".', answer)


def ex04_4(answer, blocksize: int | None = None, off: dict | None = None) -> bool:
    if not off:
        return run_first(answer)
    wrong = sorted(int(w) for w, e in off.items() if e > 1e-5)
    try:
        given = sorted({int(a) for a in answer})
    except (TypeError, ValueError):
        given = None
    whole = [int(w) for w in off if int(w) % blocksize == 0]
    if wrong:
        right = (f"rows of {', '.join(map(str, wrong))}: bitsandbytes' decode is "
                 f"{max(off[str(w)] for w in wrong):.0%} of the largest weight away from the kit's at most. "
                 f"Those rows are not whole blocks of {blocksize}, and this CPU's kernel starts a new block at "
                 "every row, so the constants are read for the wrong weights. Rows of "
                 f"{', '.join(map(str, whole)) or 'whole blocks'} decode exactly. A model with such rows gets "
                 "kit.scratch.quant's decode in those layers (load_model says so in one line).")
    else:
        right = ("none: on this machine bitsandbytes decodes every shape exactly as kit.scratch.quant does. On AVX-512 "
                 "CPUs its kernel counts blocks per row, and rows that are not whole blocks come out wrong.")
    return verdict(given == wrong, right, "list the row lengths whose printed difference is not 0, "
                   "e.g. [96]; [] if every one printed 0.", answer)
