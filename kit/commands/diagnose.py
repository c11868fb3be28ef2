"""`python -m kit diagnose`: find the usual reasons a fine-tune goes wrong, in seconds.

    python -m kit diagnose --config cpu-lora [--knob value ...]   # before training: a recipe + its data
    python -m kit diagnose --run runs/finetune/cpu-lora            # after: a finished run folder
    kit.commands.diagnose.diagnose_recipe(recipe) / diagnose_run(folder)    # the same from a notebook

Each check prints what it found and the fix. Before training (a recipe):
  labels    which tokens train (one example drawn with the trained tokens in [brackets]); no token
            trained; the end of turn not trained (the model never learns to stop); pad == end of
            turn, which a collator that masks labels by the pad id turns into that fault;
  adapters  no trainable parameter; a target module with no adapter; fp16 trainable parameters under
            a gradient scaler (transformers#23165); after one backward pass, a
            trainable parameter with no gradient (gradient checkpointing without input gradients),
            lora_B with a zero gradient; the gradient norm of each group of layers;
  memory    the largest parts of one step (kit.machine.memory.estimate) and the sequence length at which
            the chosen GPU runs out.
After training (a run folder): the same labels are not re-read; the training curve (flat, spiking,
validation turning up, with the step) and the adapter file (lora_B still all zero).
"""
from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kit.commands import recipe as recipes
from kit.arch import GPUS
from kit.engine.data import IGNORE_INDEX, collate, end_of_turn, pad_token_id, tokenize
from kit.machine.device import profile
from kit.errors import UserError

FLAT = 0.02          # a loss that moved less than 2% from its first steps to its last is flat
SPIKE = 3.0          # a step's loss above 3 x the median of the steps before it is a spike
TURNED_UP = 1.05     # lesson 01's rule: a last validation loss 5% above the lowest is overfitting


@dataclass
class Finding:
    area: str          # labels | adapters | training | memory
    name: str          # a short id, for tests and scripts
    message: str
    fix: str

    def line(self) -> str:
        return f"  [{self.area}] {self.message}\n      fix: {self.fix}"


@dataclass
class Report:
    findings: list = field(default_factory=list)
    notes: list = field(default_factory=list)       # what was measured, fine or not

    def text(self) -> str:
        head = (f"{len(self.findings)} finding(s):" if self.findings else "no finding: nothing here "
                "matches a known fault.")
        return "\n".join([*self.notes, "", head, *(f.line() for f in self.findings)]) + "\n"


# ---------------------------------------------------------------------------- labels
def label_view(row: dict, tokenizer, limit: int = 400) -> str:
    """One tokenized example as text, the trained tokens (labels != -100) in [brackets]."""
    out, inside = [], False
    for token, label in zip(row["input_ids"], row["labels"]):
        trained = label != IGNORE_INDEX
        if trained != inside:
            out.append("[" if trained else "]")
            inside = trained
        out.append(tokenizer.decode([token]))
    text = "".join(out) + ("]" if inside else "")
    return text if len(text) <= limit else text[:limit] + " ..."


def check_labels(rows: list[dict], tokenizer) -> list[Finding]:
    """rows: tokenized examples (input_ids, labels), as the loop will see them."""
    eot_name, eot = end_of_turn(tokenizer)
    trained = [[t for t, lab in zip(r["input_ids"], r["labels"]) if lab != IGNORE_INDEX] for r in rows]
    found = []
    empty = sum(not t for t in trained)
    if empty == len(rows):
        return [Finding("labels", "nothing-trained", f"no token of the {len(rows)} examples read is trained "
                        "(every label is -100): the loss is 0 or NaN and nothing learns.",
                        "train on the answer: labels = input_ids on the response and end of turn "
                        "(kit.engine.data.tokenize does this), -100 on the prompt only.")]
    if empty:
        found.append(Finding("labels", "rows-not-trained", f"{empty} of {len(rows)} examples have no trained "
                             "token (a prompt so long that the answer was cut off?).",
                             "raise max_length, or shorten the prompts."))
    no_stop = sum(bool(t) and t[-1] != eot for t in trained)
    if no_stop:
        shared = pad_token_id(tokenizer) == eot
        found.append(Finding(
            "labels", "end-of-turn-not-trained",
            f"in {no_stop} of {len(rows)} examples the last trained token is not the end of turn "
            f"({eot_name!r}): the model is never taught to stop, and keeps generating."
            + (f" The pad id is the end-of-turn id ({eot}): a collator that masks labels equal to the pad "
               "id masks every end of turn (trl#1623)." if shared else ""),
            "put the end-of-turn token at the end of every answer and keep its label; mask padding by "
            "position (attention_mask), not by token id, or give the tokenizer a pad token of its own."))
    if all(r["labels"][0] != IGNORE_INDEX for r in rows):
        found.append(Finding("labels", "prompt-trained", "the first token of every example is trained: the "
                             "prompt is trained too, so the model also learns to write questions.",
                             "set the prompt's labels to -100 (kit.engine.data.tokenize does)."))
    return found


# ---------------------------------------------------------------------------- adapters
def check_adapters(model, targets) -> list[Finding]:
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        return [Finding("adapters", "nothing-trainable", "no parameter has requires_grad: the optimizer "
                        "has nothing to change.", "call kit.engine.train.prepare_model(model, method) (or "
                        "peft's get_peft_model) before training.")]
    if targets in (None, "all-linear") or not hasattr(model, "peft_config"):
        return []
    wanted = [targets] if isinstance(targets, str) else list(targets)
    adapted = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    missing = [t for t in wanted if t not in adapted]
    return [Finding("adapters", "target-without-adapter", f"no adapter on {missing}: those layers stay frozen.",
                    f"name modules the model has (it has {sorted(adapted)} adapted); kit.arch.target_modules "
                    "lists a model's linear layers.")] if missing else []


def check_trainable_dtypes(model, grad_scaling: bool) -> list[Finding]:
    """fp16 trainable parameters under a gradient scaler: GradScaler refuses to unscale fp16
    gradients ("Attempting to unscale FP16 gradients", transformers#23165)."""
    half = [n for n, p in model.named_parameters() if p.requires_grad and p.dtype == torch.float16]
    if not (half and grad_scaling):
        return []
    return [Finding("adapters", "fp16-trainable-with-scaler", f"{len(half)} trainable parameters are fp16 (first: "
                    f"{half[0]}) and this device trains with a gradient scaler: the first step fails with "
                    "'Attempting to unscale FP16 gradients'.", "keep the trainable parameters (the adapters) in "
                    "fp32 over the 16-bit base, as kit.engine.train.prepare_model does (autocast computes in fp16).")]


def group_of(name: str) -> str:
    """'model.layers.3.self_attn.q_proj.lora_B.default.weight' -> 'layers 0-9: attention'."""
    layer = re.search(r"layers\.(\d+)\.", name)
    kind = "attention" if "attn" in name else "mlp" if "mlp" in name else "other"
    if not layer:
        return kind
    low = int(layer.group(1)) // 10 * 10
    return f"layers {low}-{low + 9}: {kind}"


def check_gradients(model, batch: dict) -> tuple[list[Finding], dict]:
    """One forward and backward pass on `batch`; -> (findings, gradient norm per group of layers)."""
    model.train()
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    if not loss.requires_grad:       # no trainable parameter reaches the loss at all
        return [Finding("adapters", "no-gradient", "the loss does not depend on any trainable parameter: "
                        "backward() would fail ('element 0 of tensors does not require grad'). A known cause "
                        "is gradient checkpointing (reentrant) on a frozen base whose inputs need no gradient.",
                        "call model.enable_input_require_grads(), or use_reentrant=False (the kit's "
                        "prepare_model does both).")], {}
    loss.backward()
    norms, missing, zero_b = {}, [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            missing.append(name)
            continue
        norms[group_of(name)] = math.hypot(norms.get(group_of(name), 0.0), p.grad.norm().item())
        if "lora_B" in name and p.grad.abs().max().item() == 0:
            zero_b.append(name)
    model.zero_grad(set_to_none=True)
    found = []
    if missing:
        found.append(Finding("adapters", "no-gradient", f"{len(missing)} trainable parameters got no gradient "
                             f"(first: {missing[0]}): they will never change. A known cause is gradient "
                             "checkpointing (reentrant) on a frozen base whose inputs need no gradient.",
                             "call model.enable_input_require_grads(), or use_reentrant=False (the kit's "
                             "prepare_model does both)."))
    if zero_b:
        found.append(Finding("adapters", "lora-b-zero-gradient", f"{len(zero_b)} lora_B matrices got a zero "
                             "gradient: their layers' outputs do not reach the loss.",
                             "check that the adapted layers are used in the forward pass."))
    return found, norms


def check_adapter_weights(state: dict) -> list[Finding]:
    """A trained adapter's tensors (safetensors): every lora_B still zero = nothing was learnt."""
    bs = {k: v for k, v in state.items() if "lora_B" in k}
    if bs and all(v.abs().max().item() == 0 for v in bs.values()):
        return [Finding("training", "adapters-unchanged", f"all {len(bs)} lora_B matrices are still zero: the "
                        "adapter adds nothing, the model is the base.", "look at the gradients (python -m kit "
                        "diagnose --config <recipe>) and the learning rate.")]
    return []


# ---------------------------------------------------------------------------- the training curve
def check_history(history: dict) -> list[Finding]:
    """history: kit.engine.train.History.as_dict() (a run folder's history.json)."""
    losses = [s["loss"] for s in history.get("steps", [])]
    found = []
    if any(not math.isfinite(x) for x in losses):
        step = next(i for i, x in enumerate(losses) if not math.isfinite(x)) + 1
        found.append(Finding("training", "loss-not-finite", f"the loss became {losses[step - 1]} at step {step}.",
                             "lower the learning rate; in fp16, keep the gradient scaler (the kit's default)."))
        return found
    if len(losses) >= 8:
        k = max(2, len(losses) // 8)
        first, last = statistics.fmean(losses[:k]), statistics.fmean(losses[-k:])
        if abs(first - last) < FLAT * abs(first):
            found.append(Finding("training", "loss-flat", f"the loss barely moved: {first:.4f} over the first {k} "
                                 f"steps, {last:.4f} over the last {k}.", "raise the learning rate (LoRA "
                                 "needs about 10 times full fine-tuning's), and check the gradients."))
        spikes = [i + 1 for i in range(4, len(losses)) if losses[i] > SPIKE * statistics.median(losses[:i])]
        if spikes:
            found.append(Finding("training", "loss-spikes", f"the loss jumped above {SPIKE:g} x its running median "
                                 f"at step(s) {spikes[:5]}: the rate is too high for this method.",
                                 "lower the learning rate, or add warm-up steps."))
    evals = [e for e in history.get("evals", []) if math.isfinite(e["val_loss"])]
    if len(evals) >= 3:
        best = min(evals, key=lambda e: e["val_loss"])
        if evals[-1]["val_loss"] > TURNED_UP * best["val_loss"]:
            found.append(Finding("training", "validation-rising", f"the validation loss turned up after step "
                                 f"{best['step']} ({best['val_loss']:.4f} -> {evals[-1]['val_loss']:.4f} at step "
                                 f"{evals[-1]['step']}): overfitting.", f"stop near step {best['step']} "
                                 "(early_stopping_patience), or train on more examples."))
    return found


# ---------------------------------------------------------------------------- memory
def check_memory(recipe: dict, gpu: str) -> tuple[list[Finding], list[str]]:
    est = recipes.estimate_for(recipe)
    if est is None:
        return [], ["memory: the estimator does not know this model's architecture"]
    parts = sorted(((k, v) for k, v in est.as_dict().items()
                    if k in ("weights", "quant_constants", "gradients", "optimizer", "activations", "logits",
                             "workspace")), key=lambda kv: -kv[1])
    notes = [f"memory of one step on a GPU, estimated: {est.total / 1e9:.2f} GB; largest parts "
             + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in parts[:3])
             + f" (the logits, batch x length x vocabulary: {est.logits / 1e9:.2f} GB)"]

    def fits(n: int) -> bool:
        return recipes.estimate_for(recipe | {"max_length": n}).total <= GPUS[gpu]

    found = []
    if not fits(1):
        found.append(Finding("memory", "does-not-fit", f"even one token per example does not fit a {gpu}: the "
                             "weights and optimizer state alone are too large.", "use QLoRA, or a larger GPU."))
        return found, notes
    low, high = 1, 2
    while high <= 1 << 17 and fits(high):
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    notes.append(f"memory: on a {gpu} this recipe fits sequences up to about {low:,} tokens (max_length "
                 f"{recipe['max_length']})")
    if recipe["max_length"] > low:
        found.append(Finding("memory", "sequence-too-long", f"max_length {recipe['max_length']} needs more than a "
                             f"{gpu} holds; about {low:,} tokens fit.", "lower max_length or the batch, or turn "
                             "on gradient_checkpointing."))
    return found, notes


# ---------------------------------------------------------------------------- the two entry points
def diagnose_recipe(recipe: dict, gpu: str = "T4", n_rows: int = 64) -> Report:
    """Before training: the recipe's data, labels, model, adapters, one backward pass, memory."""
    from kit.commands.finetune import _checked_data
    from kit.machine.models import load_model
    from kit.engine.train import prepare_model

    if gpu not in GPUS:
        raise UserError(f"gpu must be one of {list(GPUS)}; got {gpu!r}.")
    report = Report()
    data, _ = _checked_data(recipe, report.notes.append)
    model, tokenizer = load_model(recipe["model"], quantization=None if recipe["quantization"] == "none"
                                  else recipe["quantization"])
    train = data["train"].select(range(min(n_rows, len(data["train"]))))
    rows = list(tokenize(train, tokenizer, max_length=recipe["max_length"]))
    report.notes.append("one example, trained tokens in [brackets]:\n  " + label_view(rows[0], tokenizer))
    report.findings += check_labels(rows, tokenizer)
    model = prepare_model(model, recipe["method"], recipes.train_config(recipe))
    report.findings += check_adapters(model, recipe["lora_target_modules"])
    report.findings += check_trainable_dtypes(model, profile().grad_scaling)
    batch = collate([{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows[:2]],
                    pad_token_id(tokenizer))
    found, norms = check_gradients(model, batch)
    report.findings += found
    report.notes.append("gradient norm per group of layers: "
                        + ", ".join(f"{g} {n:.3g}" for g, n in sorted(norms.items())))
    found, notes = check_memory(recipe, gpu)
    report.findings += found
    report.notes += notes
    return report


def diagnose_run(folder) -> Report:
    """After training: a `python -m kit finetune` run folder's history and adapter."""
    from kit.files import read_json, read_tensors

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--run {str(folder)!r} is not a folder. Give the output_dir of a finished "
                        "`python -m kit finetune` run (runs/finetune/<recipe>).")
    if not (folder / "history.json").is_file():
        raise UserError(f"{folder} is not a run folder: it has no history.json. Give the output_dir of a "
                        "`python -m kit finetune` run (runs/finetune/<recipe>).")
    report = Report()
    history = read_json(folder / "history.json")
    steps = history.get("steps", [])
    report.notes.append(f"run {folder}: {len(steps)} steps, {len(history.get('evals', []))} validations"
                        + (f", loss {steps[0]['loss']:.4f} -> {steps[-1]['loss']:.4f}" if steps else ""))
    report.findings += check_history(history)
    adapter = folder / "adapter" / "adapter_model.safetensors"
    if adapter.is_file():
        report.findings += check_adapter_weights(read_tensors(adapter, "adapter"))
    return report


def main(argv: list[str]) -> int:
    """`python -m kit diagnose --config <recipe> [--gpu T4] [--knob value ...]` or `--run <folder>`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kit diagnose", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a finished run folder (the output_dir of python -m kit finetune)")
    parser.add_argument("--gpu", default="T4", help=f"the GPU for the memory check: one of {list(GPUS)}")
    args, rest = parser.parse_known_args(argv)
    if args.gpu not in GPUS:
        raise UserError(f"--gpu must be one of {list(GPUS)}; got {args.gpu!r}.")
    if args.run:
        if rest:
            raise UserError(f"--run takes no recipe knobs; got {rest}. Diagnose a recipe with --config instead.")
        report = diagnose_run(args.run)
    else:
        config, overrides = recipes.parse_args(rest)
        report = diagnose_recipe(recipes.check(recipes.load(config, overrides)), gpu=args.gpu)
    print(report.text(), end="")
    return 0
