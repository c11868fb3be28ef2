"""Exercise checks: every exercise of every lesson has a cell in its notebook, and a check here
that says plainly what is right and what is not.

    facts = {"val_losses": ...}            # what the notebook (or the exercise's variation) measured
    answer = None                          # TODO: your answer
    exercises[2] = check.exercise("01_full_finetuning", 2, answer, facts, globals(), SOLUTIONS)

`exercise` calls the check `ex01_2(answer, **facts)`, which compares the answer with the
measured facts (so it holds on any machine), prints a verdict in plain words and returns
{"answer", "facts", "ok"} for the notebook's results. The solutions live apart from the
notebooks, in solutions/<notebook>.py; with SOLUTIONS = True (what the tests run) the cell
takes its answer from there.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

SOLUTIONS_DIR = Path(__file__).resolve().parent.parent / "solutions"


def verdict(ok: bool, right: str, wrong: str, answer=None) -> bool:
    """Print the verdict in plain words; return it. An unanswered exercise is not right."""
    if answer is None:
        print("not answered yet: replace `None` with your answer and run the cell again.")
        return False
    print(("right: " + right) if ok else ("not yet: " + wrong))
    return bool(ok)


def close(answer, expected: float, rel: float = 0.05, abs_tol: float = 0.0) -> bool:
    """A number within `rel` (relative) or `abs_tol` of the expected value."""
    try:
        return math.isclose(float(answer), float(expected), rel_tol=rel, abs_tol=abs_tol)
    except (TypeError, ValueError):
        return False


def solution(notebook: str, number: int, namespace: dict):
    """The solution of exercise `number` of `notebook` ("01_full_finetuning"), computed by
    solutions/<notebook>.py from the notebook's variables (`namespace`: its globals())."""
    path = SOLUTIONS_DIR / f"{notebook}.py"
    if not path.is_file():
        raise FileNotFoundError(f"No solutions file {path}: the solutions ship with the kit's "
                                "repository (solutions/), not with a pip install.")
    spec = importlib.util.spec_from_file_location(f"solutions_{notebook}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, f"ex{number}")(namespace)


def exercise(notebook: str, number: int, answer, facts: dict, namespace: dict,
             use_solution: bool = False) -> dict:
    """Check exercise `number` of `notebook`: -> {"answer", "facts", "ok"} (the check prints)."""
    if use_solution:
        try:
            answer = solution(notebook, number, namespace)
        except KeyError as e:   # the solution reads what the variation computed, and it did not run
            print(f"exercise {number}: the solution needs {e} from the exercise's variation "
                  "(set EXERCISES = True)")
            answer = None
    check = globals()[f"ex{notebook[:2]}_{number}"]
    if not facts:                    # the variation did not run: a check that needs its facts waits
        try:
            return {"answer": answer, "facts": facts, "ok": check(answer)}
        except TypeError:
            print(f"exercise {number}: run its variation first (EXERCISES = True), then check")
            return {"answer": answer, "facts": facts, "ok": None}
    return {"answer": answer, "facts": facts, "ok": check(answer, **facts)}


# ============================================================================ 00 · setup
def ex00_1(answer, embedding_share: float | None = None) -> bool:
    if embedding_share is None:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    return verdict(close(answer, embedding_share, abs_tol=0.02),
                   f"{embedding_share:.0%} of tiny-llama is its embedding, which bitsandbytes does not "
                   "quantize: 4-bit only shrinks the few Linear weights that are left.",
                   "divide the embedding's parameters (49,152 x 64) by all parameters.", answer)


def ex00_2(answer, linear: int, other: int, measured_nf4_mb: float | None = None) -> bool:
    expected = (linear * (4 + 32 / 64) / 8 + other * 4) / 1e6
    note = (f" The measured footprint, {measured_nf4_mb:.1f} MB, is smaller: double quantization "
            "stores the scales in 8 bits (4.13 instead of 4.5 bits per weight)."
            if measured_nf4_mb else "")
    return verdict(close(answer, expected, rel=0.02), f"about {expected:.1f} MB.{note}",
                   "4.5 bits per Linear weight (4 + 32/64), 4 bytes for every other parameter; "
                   "MB = bytes / 1e6.", answer)


def ex00_3(answer, compute_dtype: str, grad_scaling: bool) -> bool:
    name = str(answer).replace("torch.", "").lower() if answer is not None else None
    aliases = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32"}
    return verdict(aliases.get(name, name) == compute_dtype,
                   f"{compute_dtype}{' with gradient scaling' if grad_scaling else ''}: a T4 (7.5) has no "
                   "native bf16, only emulation, so the policy reads the compute capability rather than "
                   "is_bf16_supported().",
                   "read the profile's `compute` line; the policy decides from the compute capability.",
                   answer)


# ============================================================================ 04 · quantization
def _run_first(answer) -> bool:
    return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)


def ex04_1(answer, layers: dict | None = None, layer: str | None = None) -> bool:
    if not layers or layer not in layers:
        return _run_first(answer)
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
        return _run_first(answer)
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
        return _run_first(answer)
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
        return _run_first(answer)
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
                 "kit.quant's decode in those layers (load_model says so in one line).")
    else:
        right = ("none: on this machine bitsandbytes decodes every shape exactly as kit.quant does. On AVX-512 "
                 "CPUs its kernel counts blocks per row, and rows that are not whole blocks come out wrong.")
    return verdict(given == wrong, right, "list the row lengths whose printed difference is not 0, "
                   "e.g. [96]; [] if every one printed 0.", answer)


# ============================================================================ 05 · QLoRA
def ex05_1(answer, steps: int | None = None, val_loss: dict | None = None,
           base_val_loss: dict | None = None) -> bool:
    if not val_loss or not base_val_loss:
        return _run_first(answer)
    lower = min(val_loss, key=val_loss.get)
    other = next(k for k in val_loss if k != lower)
    started = min(base_val_loss, key=base_val_loss.get)
    gap_before = base_val_loss[other] - base_val_loss[lower]
    gap_after = val_loss[other] - val_loss[lower]
    if lower == started:
        reading = (f"the base that started lower stayed lower: the gap went from {gap_before:+.3f} before "
                   f"training to {gap_after:+.3f} after {steps} steps")
    else:
        reading = (f"although {started} started lower ({base_val_loss[started]:.3f} against "
                   f"{base_val_loss[lower]:.3f}): after {steps} steps the adapters had made up the "
                   "difference between the bases on this validation set")
    return verdict(str(answer).strip().lower() == lower,
                   f"{lower}: {val_loss[lower]:.3f} against {val_loss[other]:.3f}; {reading}. One run on a "
                   "few validation examples: a difference of a few hundredths is within noise.",
                   "compare the two validation losses after the steps (the last column printed); the "
                   'lower one wins: "nf4" or "fp4".', answer)


def ex05_2(answer, ranks: list | None = None, base_weight_mb: float | None = None,
           per_rank: dict | None = None) -> bool:
    if not per_rank or not ranks:
        return _run_first(answer)
    small, big = per_rank[str(ranks[0])], per_rank[str(ranks[1])]
    ratio = lambda e: (e["gradients_mb"] + e["adam_mb"]) / base_weight_mb
    expected = ratio(big)
    return verdict(close(answer, expected, rel=0.1),
                   f"{expected:.2f} times: at r={ranks[1]} the model trains {big['trainable_share']:.2%} of "
                   f"its parameters ({big['trainable'] / small['trainable']:.1f}x r={ranks[0]}'s "
                   f"{small['trainable_share']:.2%}: adapters grow linearly with r), and their fp32 "
                   f"gradients ({big['gradients_mb']:.0f} MB) plus Adam's two moments ({big['adam_mb']:.0f} "
                   f"MB) take {expected:.2f}x the 4-bit base's {base_weight_mb:.0f} MB (r={ranks[0]}: "
                   f"{ratio(small):.2f}x). On a 135M model a large rank makes the training state the bigger "
                   "part; on a 7B model the base stays far larger. The activations barely move "
                   f"({small['activations_mb']:.0f} -> {big['activations_mb']:.0f} MB).",
                   f"add the gradients and the Adam state at r={ranks[1]} (MB) and divide by the base's "
                   "weight memory (printed last).", answer)


_DTYPES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}


def ex05_3(answer, optimizer: str, compute_dtype: str, grad_scaling: bool, here: dict) -> bool:
    try:
        opt, dtype = (str(a).replace("torch.", "").strip().lower() for a in answer)
    except (TypeError, ValueError):
        opt, dtype = None, None
    ok = opt == optimizer and _DTYPES.get(dtype, dtype) == compute_dtype
    return verdict(ok,
                   f"{optimizer} and {compute_dtype}{' with gradient scaling' if grad_scaling else ''}: on "
                   "CUDA 'auto' takes bitsandbytes' paged 8-bit AdamW, and a T4 (7.5) has no native bf16, so "
                   "each 4-bit layer dequantizes to fp16 and multiplies there, while the adapters stay fp32. "
                   f"Here ({here['device']}) the run used {here['optimizer']} in {here['compute_dtype']} at "
                   f"{here['step_s']:.2f} s per step: compare the median step time a T4 prints.",
                   "read the profile's `compute` line, and what pick_optimizer returns for a CUDA device; "
                   'answer as a pair, e.g. ("adamw_torch", "float32").', answer)


def ex05_4(answer, reached: bool | None = None, right: bool | None = None, forward_error: float | None = None,
           native: bool = False, line: str = "") -> bool:
    if reached is None:
        return _run_first(answer)
    if not reached:
        what = ("no gradient reached the input: the fused bf16 kernel has no backward, so every 4-bit "
                "layer would cut the gradient to the layers below it")
    elif not right:
        what = ("a gradient reached the input, but the repacked bytes were read in the usual layout and "
                f"the forward was {forward_error:.2g} off: the layer computed with other weights")
    else:
        what = "the gradient reached the input and was right"
    where = ("This CPU has AVX512-BF16: bitsandbytes would do this on its own after any inference pass. "
             if native else "This CPU has no AVX512-BF16, so bitsandbytes never repacks here on its own. ")
    return verdict(bool(answer) == bool(reached) and isinstance(answer, bool),
                   f"{what}. {where}The kit keeps the repacking off every model it loads: {line}",
                   "read the first printed line: did the gradient reach the input (True or False)?", answer)


# ============================================================================ 02 · LoRA from scratch
EX02_1_QUANTITIES = ("b0_diff", "formula_diff", "merge_diff", "effect")


def ex02_1(answer, rows: list | None = None) -> bool:
    if not rows:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    low, high = rows[0], rows[-1]
    rounding = 1e-3 * max(low["effect"], high["effect"])    # float32 rounding, next to the update
    changed = {k for k in ("b0_diff", "formula_diff", "merge_diff") if max(low[k], high[k]) > rounding}
    ratio = high["effect"] / low["effect"]
    if not math.isclose(ratio, 1.0, rel_tol=0.01):
        changed.add("effect")
    given = {answer} if isinstance(answer, str) else set(answer) if answer is not None else None
    if given is not None and not given <= set(EX02_1_QUANTITIES):
        return verdict(False, "", f"name the quantities as the cell does: {list(EX02_1_QUANTITIES)}.", answer)
    return verdict(given == changed,
                   f"only the update's size changes: it grows {ratio:.2f}x as the scaling goes from "
                   f"{low['scaling']:g} to {high['scaling']:g}. With B = 0 the update is 0 at any scaling (0 "
                   "times anything), and the formula and merge equalities hold whatever number stands in "
                   "front of BA. Once training starts, the scaling multiplies the effect of every step on "
                   "B: Adam's steps have a size set by the learning rate, so a 4x alpha acts much like a 4x "
                   "learning rate. That is why the rate is re-tuned when alpha changes, and why the LoRA "
                   "paper keeps alpha fixed while it varies r.",
                   "a quantity changes only if it moves beyond float rounding (here about "
                   f"{rounding:.0e}, a thousandth of the update). Compare the two rows: what is exactly 0 at "
                   "both scalings, what stays at rounding size, and what grows with the scaling?", answer)


def ex02_2(answer, rank: int | None = None, layers: int | None = None, shapes_layer0: dict | None = None,
           trainable: int | None = None) -> bool:
    if trainable is None:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    terms = " + ".join(f"({shape[1]} + {shape[0]})" for shape in shapes_layer0.values())
    return verdict(close(answer, trainable, rel=0.0),
                   f"{trainable:,} = {layers} layers x r {rank} x ({terms}): r (in + out) per adapted layer, "
                   "two layers per decoder layer.",
                   "count r x (in + out) for each adapted layer, two per decoder layer, times the layers; "
                   "v_proj maps 576 to 192 (it is not square).", answer)


def _ex02_3_parts(answer):
    if not isinstance(answer, (list, tuple)) or len(answer) != 2:
        return None
    return [str(a).strip().lower().split()[0] if str(a).strip() else "" for a in answer]


def ex02_3(answer, rank: int | None = None, first: float | None = None, last: float | None = None,
           steps: list | None = None, energy_by_step: list | None = None) -> bool:
    if first is None or not energy_by_step:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    layer = "first" if first > last else "last"
    change = energy_by_step[-1] - energy_by_step[0]
    accepted = {"same"} if abs(change) < 0.03 else set()      # within about 2 points: the same
    accepted |= {"more"} if change >= 0.01 else {"less"} if change <= -0.01 else set()
    longer = "same" if abs(change) < 0.02 else "more" if change > 0 else "less"
    parts = _ex02_3_parts(answer) if answer is not None else None
    if answer is not None and parts is None:
        return verdict(False, "", 'answer with two words, e.g. ("first", "more").', answer)
    wrong = []
    if parts and parts[0] != layer:
        wrong.append(f"compare the mean energies printed for the first and the last layer: the larger "
                     f"share in the top {rank} directions is the more concentrated update.")
    if parts and parts[1] not in accepted:
        wrong.append(f"compare the energy after {steps[0]} steps with the energy after {steps[-1]}: a "
                     "rising share is more low-rank, a falling one less; within about 2 points, the same.")
    why = {"same": "the share barely moves: the low-rank structure is there after a few steps and stays, "
                   "the directions all batches share growing at the pace of the rest",
           "more": "the directions all batches share grow steadily while the rest, one batch's own, add "
                   "up like noise, so the update concentrates as the run goes on",
           "less": "later steps add directions of their own (the model starts to fit single examples), "
                   "so the energy spreads"}[longer]
    return verdict(not wrong,
                   f"the {layer} layer's update is the more concentrated ({first:.0%} in the first layer, "
                   f"{last:.0%} in the last, top {rank} directions). The top {rank} held "
                   f"{energy_by_step[0]:.1%} of the update after {steps[0]} steps and {energy_by_step[-1]:.1%} "
                   f"after {steps[-1]}: {why}. LoRA's bet is on those shared directions.",
                   " ".join(wrong), answer)


# ============================================================================ 03 · LoRA in practice
def _ex03_choice(answer, aliases: dict):
    """The canonical option an answer names ("qv" -> "q_proj,v_proj"), or None."""
    key = str(answer).strip().lower().replace(" ", "")
    return next((option for option, names in aliases.items() if key in names), None)


def ex03_1(answer, runs: dict | None = None) -> bool:
    if not runs:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    best = min(runs, key=lambda label: runs[label]["val_loss"])
    other = next(label for label in runs if label != best)
    given = _ex03_choice(answer, {"all-linear": ("all-linear", "all", "alllinear", "all-linearr=8"),
                                  "q_proj,v_proj": ("q_proj,v_proj", "qv", "q,v", "q_proj,v_projr=64")})
    why = ("every layer, the MLP's included, gets a few directions: more of what the task needs is "
           "reachable than through a high rank in two attention projections (the QLoRA paper found "
           "all layers needed to match full fine-tuning)" if best == "all-linear" else
           "here the rank-64 attention adapters did better; on a short run this can go either way, "
           "and the QLoRA paper found all layers needed at scale")
    return verdict(given == best,
                   f"{best}: validation loss {runs[best]['val_loss']:.3f} against {runs[other]['val_loss']:.3f}, "
                   f"with {runs[best]['trainable']:,} trainable numbers against {runs[other]['trainable']:,}. "
                   f"Roughly the same budget; {why}. One short run each: a gap of a few hundredths may "
                   "be within seed noise.",
                   'compare the two validation losses the cell printed: lower is better. Answer '
                   '"all-linear" or "q_proj,v_proj".', answer)


def ex03_2(answer, steps: list | None = None, spread: list | None = None, ranks: list | None = None) -> bool:
    if not spread:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    if len(ranks) < 2:
        return verdict(False, "", "the sweep needs at least two ranks (SWEEP_RANKS) to compare.", answer)
    expected = "more" if spread[-1] > spread[0] else "less"
    why = ("the larger ranks use their extra directions as training goes on" if expected == "more" else
           "early on the ranks differ in how fast they start (at a fixed alpha a small rank has a "
           "larger scaling, alpha / r); with more steps they converge on what the task needs, which "
           "a few directions hold (lesson 02)")
    given = str(answer).strip().lower().split()[0] if answer is not None and str(answer).strip() else None
    return verdict(given == expected,
                   f"{expected}: the gap between the best and the worst rank's loss was {spread[0]:.3f} at "
                   f"step {steps[0]} and {spread[-1]:.3f} at step {steps[-1]}: {why}. Each is one batch, "
                   "the same for every rank; the lesson's full question (SWEEP_STEPS = 40, SWEEP_BATCH = "
                   "8) may answer differently: try it.",
                   "compare the two 'best to worst' gaps the cell printed: a larger gap later means rank "
                   'matters more. Answer "more" or "less".', answer)


def ex03_3(answer, combos: dict | None = None, delta_size: float | None = None, rank: int | None = None) -> bool:
    if not combos:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    exact = min(combos, key=lambda kind: combos[kind]["delta_max_abs_diff"])
    given = str(answer).strip().strip('"\'').lower() if answer is not None else None
    if given is not None and given not in combos:
        return verdict(False, "", f"name one of the combination types the cell tried: {list(combos)}.", answer)
    text = {"cat": f"stacks the two adapters side by side (rank {combos['cat']['rank']}), so its update is "
                   "the weighted sum of the two updates",
            "linear": "averages the A's and the B's separately, so its product B A carries cross terms "
                      "(B1 A2, B2 A1) and scaling factors the average does not",
            "svd": f"forms the average update and keeps its top {combos['svd']['rank']} directions (peft's "
                   "default): close, not exact"}
    lines = "; ".join(f"'{k}' {text[k]} (difference {combos[k]['delta_max_abs_diff']:.2g})" for k in combos)
    return verdict(given == exact,
                   f"'{exact}', up to rounding (the average update is up to {delta_size:.2g}): {lines}. "
                   "None of them averages the outputs, which runs both adapters: even the exact "
                   f"average update gives logits up to {combos[exact]['logits_vs_output_average']:.2g} away "
                   "from the average of the two outputs, because the model is not linear in its weights.",
                   "read the 'max |delta W - average delta W|' column: the type whose difference is at "
                   "float rounding, far below the size of the update, is exact.", answer)


def ex03_4(answer, at_lr: dict | None = None, at_low_lr: dict | None = None,
           retention_before: float | None = None, full_retention_01: float | None = None) -> bool:
    if not at_lr or not at_low_lr:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    d_ret = at_low_lr["retention"] - at_lr["retention"]
    d_acc = at_low_lr["accuracy"] - at_lr["accuracy"]
    try:
        ok = len(answer) == 2 and close(answer[0], d_ret, rel=0, abs_tol=0.01) and \
            close(answer[1], d_acc, rel=0, abs_tol=0.01)
    except TypeError:
        ok = False
    full = (f" Full fine-tuning in notebook 01 kept {full_retention_01:.0%}, after its own, longer run."
            if full_retention_01 is not None else "")
    reading = ("That is the trade: a lower rate moves the adapters less, so less of the base model's "
               "knowledge is disturbed and less of the task is learned." if d_ret > 0 and d_acc <= 0 else
               "No clean trade here: a lower rate moves the adapters less, which usually keeps more of "
               "the base model's knowledge and learns less of the task, but not on every short run.")
    return verdict(ok,
                   f"retention {100 * d_ret:+.0f} points ({at_lr['retained']} -> {at_low_lr['retained']} of "
                   f"{at_lr['n_probe']} probe questions; {retention_before:.0%} before training), exact match "
                   f"{100 * d_acc:+.0f} points ({at_lr['correct']} -> {at_low_lr['correct']} of "
                   f"{at_lr['n_test']}). {reading} The intervals of {at_lr['n_probe']} and {at_lr['n_test']} "
                   f"items are wide (exact match at lr {at_lr['lr']:g}: {at_lr['interval'][0]:.0%} to "
                   f"{at_lr['interval'][1]:.0%}), so a difference of a few items is within noise; the study "
                   f"measures this trade with more items and seeds.{full}",
                   "two numbers, (retention at the lower rate - retention at LR, exact match at the lower "
                   "rate - exact match at LR), as shares: 3 of 30 more is 0.1.", answer)


# ============================================================================ 01 · full fine-tuning
def _ex01_pair(answer):
    """The two parts of a two-part answer (a tuple, or the list JSON makes of it), else None."""
    return tuple(answer) if isinstance(answer, (list, tuple)) and len(answer) == 2 else None


def _ex01_bool(value):
    if isinstance(value, bool):
        return value
    words = {"true": True, "yes": True, "false": False, "no": False}
    return words.get(value.strip().lower()) if isinstance(value, str) else None


def ex01_1(answer, val_losses: list | None = None, passes: float | None = None, lr: float | None = None,
           high_lr: float | None = None, retention_lr: int | None = None,
           retention_high_lr: int | None = None, retention_total: int | None = None,
           main_turned_up: bool | None = None, main_best_passes: float | None = None) -> bool:
    if not val_losses:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    lowest = min(val_losses)
    turned_up = val_losses[-1] > lowest * 1.05              # the notebook's rule (section 6)
    change = ("falls" if retention_high_lr < retention_lr else
              "rises" if retention_high_lr > retention_lr else "holds")
    pair = _ex01_pair(answer)
    up_ok = pair is not None and _ex01_bool(pair[0]) is turned_up
    change_ok = pair is not None and str(pair[1]).strip().lower() == change
    curve = f"{val_losses[0]:.3f}, lowest {lowest:.3f}, last {val_losses[-1]:.3f}"
    overfitting = (f"it turned up ({curve}) after {passes:.2f} passes over the data." if turned_up else
                   f"it did not turn up ({curve}) in {passes:.2f} passes: every batch was new to the model, so "
                   "there was nothing to memorise and the validation loss followed the training loss. "
                   "Overfitting takes repeats"
                   + (f": section 6's run turned up after {main_best_passes:.1f} passes over its examples."
                      if main_turned_up else "."))
    forgetting = (f"Retention {retention_lr}/{retention_total} at lr {lr:g}, {retention_high_lr}/{retention_total} "
                  f"at {high_lr:g}: it {change}. "
                  + (f"AdamW's steps are about as large as the learning rate, so {high_lr / lr:g} times the rate "
                     f"moves the weights about {high_lr / lr:g} times further from the pretrained ones in the same "
                     "number of steps, and full fine-tuning lets every weight move: general "
                     "knowledge goes first. More data protects against overfitting, not against forgetting."
                     if change == "falls" else
                     "In this short run the larger rate did not cost retention; run EX1_STEPS = STEPS and look again."))
    hint = ("answer as a pair, e.g. (False, \"falls\")." if pair is None else
            "compare the last validation loss with the lowest one (turned up = more than 5% above it)."
            if not up_ok else "compare the two retention counts the cell prints: \"falls\", \"holds\" or \"rises\".")
    return verdict(up_ok and change_ok, f"{overfitting} {forgetting}", hint, answer)


def ex01_2(answer, params: int, total: int, optimizer: int, activations: int, logits: int, workspace: int,
           activation_rows: list | None = None) -> bool:
    states = 16 * params
    hand, extra = states / 1e9, (total - states) / 1e9
    pair = _ex01_pair(answer)
    ok = pair is not None and close(pair[0], hand, rel=0.02) and close(pair[1], extra, rel=0.1, abs_tol=0.01)
    biggest = sorted(activation_rows or [], key=lambda row: -row[1])[:3]
    parts = "; ".join(f"{what} {nbytes / 1e6:,.0f} MB" for what, nbytes in biggest)
    right = (f"16 bytes x {params / 1e9:.2f}B parameters = {hand:.1f} GB; the estimate adds {extra * 1e3:,.0f} MB "
             f"({extra / (total / 1e9):.1%} of {total / 1e9:.1f} GB): activations {activations / 1e6:,.0f} MB "
             f"({parts}), logits {logits / 1e6:,.0f} MB, workspace {workspace / 1e6:,.0f} MB. With gradient "
             "checkpointing the forward pass keeps only each layer's input (the backward pass recomputes the "
             "rest, one layer at a time), and at batch 1 x 512 tokens there are only 512 positions to keep "
             "anything for; the 16 bytes per parameter do not shrink with the batch.")
    return verdict(ok, right, "16 bytes times the parameter count, in GB (1 GB = 1e9 bytes); what the "
                   "estimate adds is its total minus that. Answer as a pair, e.g. (20.0, 2.0).", answer)


def ex01_3(answer, small: dict | None = None, batch: int | None = None, seq_len: int | None = None,
           big: dict | None = None, batch_big: int | None = None, seq_len_big: int | None = None) -> bool:
    if not small or not big:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    changed = {bar for bar in small if abs(big[bar] - small[bar]) > 0.01 * small[bar]}
    fixed = max((bar for bar in small if bar not in changed), key=lambda bar: small[bar])  # Adam's states
    per_example = [small["activations"] / batch, big["activations"] / batch_big * seq_len / seq_len_big]
    crossings = [math.floor(small[fixed] / pe) + 1 for pe in per_example]     # activations > the fixed bar
    pair = _ex01_pair(answer)
    names = None
    if pair is not None:
        names = pair[0].split(",") if isinstance(pair[0], str) else pair[0]
        names = {str(n).strip().lower() for n in names} if isinstance(names, (list, tuple, set)) else None
    bars_ok = names == changed
    try:
        batch_ok = min(crossings) - 1 <= float(pair[1]) <= max(crossings) + 1
    except (TypeError, ValueError):
        batch_ok = False
    already = f"; batch {batch} already does, just" if min(crossings) <= batch else ""
    right = (f"{' and '.join(sorted(changed))} change: activations {small['activations'] / 1e6:,.0f} -> "
             f"{big['activations'] / 1e6:,.0f} MB, logits {small['logits'] / 1e6:,.0f} -> {big['logits'] / 1e6:,.0f} MB, "
             "both proportional to batch x tokens, while the weights, their gradients and Adam's states do not "
             f"depend on the batch. One example of {seq_len} tokens keeps about {per_example[0] / 1e6:,.0f} MB of "
             f"activations, so {min(crossings)} examples outweigh the {fixed} bar, {small[fixed] / 1e6:,.0f} MB{already}.")
    hint = ("answer as a pair, e.g. ([\"weights\"], 100)." if pair is None else
            "compare every row of the two columns: which numbers moved?" if not bars_ok else
            f"activations per example = the activation bar / {batch}; how many examples exceed the largest "
            "bar that does not grow?")
    return verdict(bars_ok and batch_ok, right, hint, answer)


# ============================================================================ 06 · choosing a method, 07 · scaling out
def _pair(answer, n: int = 2):
    """`answer` as a tuple of n items, or None if it is not one."""
    try:
        items = tuple(answer)
    except TypeError:
        return None
    return items if len(items) == n and not isinstance(answer, str) else None


def _whole(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def ex06_1(answer, recoloured_columns=None, reframed=(), largest_here=None, largest_there=None,
           decision_changes=None, setting=None) -> bool:
    if recoloured_columns is None:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    got = _pair(answer)
    ok = (got is not None and isinstance(got[0], (list, tuple, set))
          and sorted(map(str, got[0])) == sorted(recoloured_columns) and got[1] is decision_changes)
    gpu, rank, try_gpu, try_rank = setting
    moved = "; ".join(f"{m} {largest_here[m]} -> {largest_there[m]}" for m in largest_here
                      if largest_here[m] != largest_there[m])
    return verdict(ok,
                   f"from r={rank} on {gpu} to r={try_rank} on {try_gpu}, the colour changes in "
                   f"{', '.join(recoloured_columns) or 'no column'}: the rank only enters what the adapters add, so "
                   f"the full fine-tuning columns cannot change colour. {len(reframed)} cells change frame: the "
                   "frame is the GPU's. The decision " + (f"changes: {moved}." if decision_changes else "stays."),
                   "compare the two size-table figures column by column: which methods does the rank enter "
                   "(full fine-tuning has no adapters)? Give the columns as a list, e.g. [\"lora\"], and "
                   "True/False for the decision: does any method's largest preset change?", answer)


def ex06_2(answer, longest=None, with_band=None, options=()) -> bool:
    if longest is None:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    got = _pair(answer)

    def fine(value, key):   # the widget's longest choice that fits, up to the exact longest
        floor = max([o for o in options if o <= longest[key]], default=1)
        return _whole(value) and floor <= value <= longest[key]

    ok = got is not None and fine(got[0], "checkpointing") and fine(got[1], "no_checkpointing")
    return verdict(ok,
                   f"about {longest['checkpointing']:,} tokens with checkpointing and {longest['no_checkpointing']:,} "
                   "without. Without checkpointing every layer keeps all its intermediate activations for the "
                   "backward pass; with it, only each layer's input, and the rest is recomputed. Activations grow "
                   "with batch x length, so at batch 4 they, not the 4-bit weights, decide the length. With the "
                   f"estimator's error band as headroom: {with_band['checkpointing']:,} and "
                   f"{with_band['no_checkpointing']:,} tokens.",
                   "in the calculator set model llama-2-7b, method qlora, bits 4, rank 8, batch 4, GPU T4 and raise "
                   "seq len until it says 'does NOT fit': the answer is the longest that still fits, once with "
                   "checkpointing and once without, e.g. (4096, 1024).", answer)


def ex06_3(answer, lora_step_s: float, qlora_step_s: float, timing=None, study_step_s=None) -> bool:
    ratio = qlora_step_s / lora_step_s
    how = "slower than" if ratio > 1.05 else "faster than" if ratio < 0.95 else "about as fast as"
    parts = (" Timed apart on the same batch, QLoRA's forward pass took "
             f"{timing['qlora']['forward_s'] / timing['lora']['forward_s']:.2f}x LoRA's and its backward pass "
             f"{timing['qlora']['backward_s'] / timing['lora']['backward_s']:.2f}x." if timing else "")
    other = (f" The study's runs measured {study_step_s['qlora'] / study_step_s['lora']:.2f}x: one short run's "
             "ratio moves by 10% or more on a shared machine." if study_step_s else "")
    return verdict(close(answer, ratio, rel=0.05),
                   f"QLoRA took {ratio:.2f}x LoRA's time per step here ({how} LoRA). The adapters are the same; "
                   "the base is not: every 4-bit weight block is dequantized to the compute dtype before its "
                   "matrix product (lesson 05, section 1). One short run's ratio moves by several percent."
                   + parts + other,
                   "divide QLoRA's s/step by LoRA's in the overview table (section 4).", answer)


def ex07_1(answer, same_examples=None, stream_rebuilt=None, identical=None, max_loss_diff=None,
           first_step_diff=None, max_rel_diff=None, lora_dropout=None, batches=None) -> bool:
    if same_examples is None:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    got = _pair(answer)
    ok = got is not None and got[0] is same_examples and got[1] is identical
    if identical:
        why = (f"the losses agree to {max_loss_diff:.1e}: with no dropout and answers of equal length, the mean of "
               "the two processes' token means is the token mean of the whole batch.")
    else:
        why = (f"the losses differ by up to {max_loss_diff:.1e} ({max_rel_diff:.2%} of the loss), "
               f"{first_step_diff:.1e} already at step 1, where the weights are still the same: each process "
               "averages the loss over its own answer tokens and the two means are then averaged, which weighs "
               "a token of the batch with fewer answer tokens a little more than one process's mean over all of "
               f"them; and each process draws its own dropout masks (lora_dropout {lora_dropout}). Afterwards "
               "the weights differ slightly too, so the gap can grow.")
    same = ("the same examples every step: rank 0 takes batch 2i of the one stream, rank 1 batch 2i + 1, and "
            "together they are the one-process batch i; "
            if same_examples else "not the same examples (an odd BATCH cannot be halved); ")
    return verdict(ok, same + why,
                   "read the cell's two checks: does each step's rebuilt one-process batch equal rank 0's plus "
                   "rank 1's examples, and are the two loss columns equal to the last digit (not just close)? "
                   "Answer two True/False values.", answer)


def ex07_2(answer, fewest_lora_70b=None, fewest_full_8b=None, seq_len=None, model=None, flat_gb=None,
           largest_flat=None) -> bool:
    if largest_flat is None:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    got = _pair(answer, 3)
    part = str(got[2]).lower().strip().replace(" ", "_") if got else ""
    ok = (got is not None and _whole(got[0]) and _whole(got[1]) and got[0] == fewest_lora_70b
          and got[1] == fewest_full_8b and part.rstrip("s") in {p.rstrip("s") for p in largest_flat.values()})
    stays = ", ".join(f"{m} {largest_flat[m]} {flat_gb[m][largest_flat[m]]:.1f} GB" for m in largest_flat)
    return verdict(ok,
                   f"{fewest_lora_70b} A100-80GB for LoRA of llama-2-70b, {fewest_full_8b} for full fine-tuning of "
                   f"llama-3-8b (16 bytes per parameter for its weights, gradients and Adam states: more than one card holds). "
                   f"At {seq_len} tokens the activations stay put ({model}, per GPU: {stays}): FSDP shards "
                   "weights, gradients and optimizer states, but every GPU still runs its own batch through every "
                   "layer. Next: a shorter sequence or a smaller batch per GPU, or sharding the sequence itself "
                   "(sequence / context parallelism); more GPUs alone no longer help.",
                   "raise gpus under fsdp until the bar drops below the A100-80GB line, for each model and method "
                   "(or call S.smallest_gpu_count); for the part, compare the 2-GPU and 8-GPU bars at 4096 tokens: "
                   "which slice keeps its size? Answer e.g. (3, 4, \"weights\").", answer)


def ex07_3(answer, interrupted_at=None, resumed_at=None, exit_code=None, steps_done=None, save_steps=0) -> bool:
    if interrupted_at is None:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    if interrupted_at == 0:
        return verdict(False, "", "the Ctrl-C came before the first step finished, so there was nothing to "
                       "keep: raise ex3_seconds and run the cell again.", answer)
    ok = _whole(answer) and answer == resumed_at
    return verdict(ok,
                   f"it resumed from step {resumed_at}, where the Ctrl-C stopped it ({interrupted_at} steps done, "
                   f"exit code {exit_code}): nothing was lost although save_steps is {save_steps}, because the "
                   "interrupt itself checkpoints. The training loop catches the KeyboardInterrupt, saves the "
                   "finished steps (trainable weights, optimizer state, random generators, the position in the "
                   "data stream, the history) and lets it through. save_steps is for what cannot be caught: a "
                   "killed kernel, a Colab session that ends, a power cut.",
                   "read the second command's last lines ('resumed at N') or resumed_at in its summary.json.",
                   answer)


# ==== 08 · your own data
def ex08_1(answer, loss_tokens: int, assistant_turns: int) -> bool:
    return verdict(close(answer, loss_tokens, abs_tol=0.5),
                   f"{loss_tokens} tokens: the assistant turns' text plus one end-of-turn token for each of "
                   f"the {assistant_turns} answers; the system and user turns and the role headers carry none.",
                   "count only the tokens in [[...]]: each answer's text and its end-of-turn token.", answer)


def ex08_2(answer, random: float, grouped: float) -> bool:
    halved = "at least halves it" if grouped <= random / 2 else "cuts it, though by less than half"
    return verdict(close(answer, random, abs_tol=0.03),
                   f"about {random:.0%} of a random batch was padding; grouping by length {halved} "
                   f"({grouped:.0%}).", "read the 'random' line of section 2 (a share between 0 and 1).",
                   answer)


# The kit's loop and TRL's SFTTrainer on the same batches: the largest relative loss difference
# that still counts as the same computation. In float32 on a CPU the two differ by about 2e-5
# (the reference run of notebook 08): TRL scores the tokens with transformers' fused LM head,
# which sums the log-probabilities in another order than the model's own cross-entropy.
PARITY_TOLERANCE = 1e-4


def ex08_3(answer, max_rel_diff: float) -> bool:
    same = max_rel_diff < PARITY_TOLERANCE
    return verdict(answer is not None and bool(answer) == same,
                   f"{'the same' if same else 'not the same'} losses (largest relative difference "
                   f"{max_rel_diff:.1e}): the same batches, seed, schedule and optimizer make the same "
                   "computation. A warm-up on one side changes the first step's learning rate (0 in "
                   "transformers' schedule), so every loss after the first differs.",
                   "compare the two lists of losses section 3 printed.", answer)
