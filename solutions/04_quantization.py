"""Solutions to notebook 04's exercises: each takes the notebook's variables and returns the
answer the exercise asks for. Try the exercise first; the notebook's check says what is right."""
from kit.scratch.quant import quantize, sqnr_db


def ex1(ns):
    # NF4's signal-to-noise ratio with one absmax per block, minus with one absmax per tensor
    if "ex_w" not in ns:
        return None
    w, blocksize = ns["ex_w"], ns["BLOCKSIZE"]
    per_block = sqnr_db(w, quantize(w, "nf4", blocksize=blocksize).dequantize())
    per_tensor = sqnr_db(w, quantize(w, "nf4", blocksize=None).dequantize())
    return per_block - per_tensor


def ex2(ns):
    # a 4-bit code, an 8-bit absmax per block of g weights, one fp32 constant per 256 absmax values
    return {g: 4 + 8 / g + 32 / (256 * g) for g in (32, 256)}


def ex3(ns):
    # the FP4 format whose whole model scored the lower perplexity
    rows = ns.get("ex3_rows")
    return min(rows, key=lambda name: rows[name]["perplexity"]) if rows else None


def ex4(ns):
    # the row lengths whose bitsandbytes decode differs from the kit's decode of its own codes
    if "ex4" not in ns:
        return None
    return [p.shape[1] for p in ns["ex4"].probes if p.dequantize_error > 1e-5]
