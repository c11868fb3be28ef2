"""kit.commands.diagnose: each check finds the fault it names when the fault is put in, and a clean setup
gives no finding; the command prints its report, and a bad input is one `error:` line."""
import json

import pytest
import torch
from safetensors.torch import save_file
from test_cli_errors import kit, one_error_line

from kit.commands import diagnose as dg, recipe as recipes
from kit.engine.data import IGNORE_INDEX, collate, end_of_turn, make_task, pad_token_id, tokenize
from kit.engine.train import prepare_model


@pytest.fixture(scope="module")
def rows(tokenizer):
    data = make_task("dates", n_train=6, n_val=0, n_test=0)
    return [dict(r) for r in tokenize(data["train"], tokenizer)]


def names(findings):
    return {f.name for f in findings}


# ---------------------------------------------------------------------------- labels
def test_the_kits_own_labels_have_no_finding_and_the_view_marks_the_answer(rows, tokenizer):
    assert dg.check_labels(rows, tokenizer) == []
    view = dg.label_view(rows[0], tokenizer)
    assert view.endswith(f"{end_of_turn(tokenizer)[0]}]") and view.count("[") == 1   # the answer only


def test_labels_all_masked_are_caught(rows, tokenizer):
    masked = [dict(r, labels=[IGNORE_INDEX] * len(r["labels"])) for r in rows]
    assert names(dg.check_labels(masked, tokenizer)) == {"nothing-trained"}


def test_an_end_of_turn_masked_by_a_pad_id_collator_is_caught(rows, tokenizer):
    """The trl#1623 pattern: pad = end of turn, and labels equal to the pad id set to -100."""
    pad = pad_token_id(tokenizer)
    assert pad == end_of_turn(tokenizer)[1]                      # SmolLM2 pads with <|im_end|>
    masked = [dict(r, labels=[IGNORE_INDEX if t == pad else lab for t, lab in zip(r["input_ids"], r["labels"])])
              for r in rows]
    found = dg.check_labels(masked, tokenizer)
    assert names(found) == {"end-of-turn-not-trained"} and "trl#1623" in found[0].message


def test_a_trained_prompt_is_caught(rows, tokenizer):
    whole = [dict(r, labels=list(r["input_ids"])) for r in rows]
    assert names(dg.check_labels(whole, tokenizer)) == {"prompt-trained"}


# ---------------------------------------------------------------------------- adapters
@pytest.fixture
def batch(rows, tokenizer):
    return collate([{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows[:2]],
                   pad_token_id(tokenizer))


def test_a_prepared_lora_model_has_no_finding_and_every_group_a_gradient(tiny, batch):
    model = prepare_model(tiny[0], "lora", lora_dropout=0.0)
    assert dg.check_adapters(model, "all-linear") == []
    found, norms = dg.check_gradients(model, batch)
    assert found == [] and norms and all(n > 0 for n in norms.values())
    assert dg.group_of("base_model.model.model.layers.12.mlp.down_proj.lora_B.default.weight") == "layers 10-19: mlp"


def test_a_model_with_nothing_trainable_is_caught(tiny):
    model = tiny[0]
    for p in model.parameters():
        p.requires_grad_(False)
    assert names(dg.check_adapters(model, "all-linear")) == {"nothing-trainable"}


def test_fp16_adapters_under_a_gradient_scaler_are_caught(tiny):
    model = prepare_model(tiny[0], "lora", lora_dropout=0.0)
    assert dg.check_trainable_dtypes(model, grad_scaling=True) == []          # the kit's: fp32 adapters
    for n, p in model.named_parameters():
        if p.requires_grad:
            p.data = p.data.half()                                            # what a hand-made setup does
    assert dg.check_trainable_dtypes(model, grad_scaling=False) == []         # bf16/fp32 policy: no scaler
    assert names(dg.check_trainable_dtypes(model, grad_scaling=True)) == {"fp16-trainable-with-scaler"}
    # ... and the failure it predicts is real: torch's GradScaler refuses such gradients
    p = next(p for p in model.parameters() if p.requires_grad)
    optimizer, scaler = torch.optim.SGD([p], lr=0.1), torch.amp.GradScaler("cpu")
    scaler.scale(p.float().sum()).backward()
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        scaler.unscale_(optimizer)


def test_a_target_without_an_adapter_is_caught(tiny):
    model = prepare_model(tiny[0], "lora", lora_target_modules=["q_proj"], lora_dropout=0.0)
    found = dg.check_adapters(model, ["q_proj", "v_proj"])
    assert names(found) == {"target-without-adapter"} and "v_proj" in found[0].message


def test_reentrant_checkpointing_on_a_frozen_base_is_caught(tiny, batch):
    """Gradient checkpointing with reentrant recomputation, and inputs that need no gradient
    (the frozen embedding's output): the adapters inside get no gradient at all."""
    model = prepare_model(tiny[0], "lora", lora_dropout=0.0)
    inner = model.base_model.model
    inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    inner.disable_input_require_grads()          # what a hand-written setup often lacks
    found, _ = dg.check_gradients(model, batch)
    assert names(found) == {"no-gradient"}
    inner.enable_input_require_grads()           # the fix the finding names
    assert dg.check_gradients(model, batch)[0] == []


def test_an_adapter_whose_lora_b_never_moved_is_caught():
    zero = {"base_model.model.layers.0.q_proj.lora_A.weight": torch.randn(8, 16),
            "base_model.model.layers.0.q_proj.lora_B.weight": torch.zeros(16, 8)}
    assert names(dg.check_adapter_weights(zero)) == {"adapters-unchanged"}
    moved = dict(zero, **{"base_model.model.layers.0.q_proj.lora_B.weight": torch.full((16, 8), 1e-4)})
    assert dg.check_adapter_weights(moved) == []


# ---------------------------------------------------------------------------- the training curve
def history(losses, vals=()):
    return {"steps": [{"step": i + 1, "loss": x} for i, x in enumerate(losses)],
            "evals": [{"step": 4 * i, "val_loss": v} for i, v in enumerate(vals)]}


def test_a_falling_loss_has_no_finding():
    assert dg.check_history(history([2.0 * 0.8 ** i for i in range(16)], [2.0, 1.0, 0.6, 0.5])) == []


@pytest.mark.parametrize("losses,vals,name", [
    ([1.0, 1.001, 0.999, 1.0] * 4, (), "loss-flat"),
    ([1.0, 0.9, 0.8, 0.7, 0.6, 5.0, 0.5, 0.45, 0.4], (), "loss-spikes"),
    ([1.0, 0.8, float("nan")], (), "loss-not-finite"),
    ([1.0 * 0.9 ** i for i in range(12)], (1.0, 0.5, 0.4, 0.6), "validation-rising"),
])
def test_each_fault_of_the_curve_is_caught(losses, vals, name):
    found = dg.check_history(history(losses, vals))
    assert names(found) == {name}
    if name == "validation-rising":
        assert "after step 8" in found[0].message


# ---------------------------------------------------------------------------- memory
def test_a_sequence_too_long_for_the_gpu_is_caught_and_the_limit_stated():
    recipe = recipes.check(recipes.load("cpu-lora"))
    found, notes = dg.check_memory(recipe, "T4")
    assert found == [] and "fits sequences up to about" in notes[-1]
    limit = int(notes[-1].split("about ")[1].split(" tokens")[0].replace(",", ""))
    assert recipes.estimate_for(recipe | {"max_length": limit}).total <= 15e9
    assert recipes.estimate_for(recipe | {"max_length": limit + 1}).total > 15e9
    found, _ = dg.check_memory(recipe | {"max_length": 4 * limit}, "T4")
    assert names(found) == {"sequence-too-long"}


# ---------------------------------------------------------------------------- the command
def test_a_run_folder_is_read_and_its_faults_found(tmp_path):
    (tmp_path / "history.json").write_text(json.dumps(history([1.0, 1.001, 0.999, 1.0] * 4)))
    (tmp_path / "adapter").mkdir()
    save_file({"m.lora_B.weight": torch.zeros(4, 2), "m.lora_A.weight": torch.ones(2, 4)},
              str(tmp_path / "adapter" / "adapter_model.safetensors"))
    report = dg.diagnose_run(tmp_path)
    assert names(report.findings) == {"loss-flat", "adapters-unchanged"}
    assert "2 finding(s)" in report.text()


@pytest.mark.slow
def test_the_command_on_a_clean_recipe_prints_no_finding():
    run = kit("diagnose", "--config", "cpu-lora", timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "trained tokens in [brackets]" in run.stdout and "no finding" in run.stdout
    assert "gradient norm per group of layers" in run.stdout and "fits sequences up to about" in run.stdout


def test_bad_input_is_one_error_line_from_the_command():
    assert "is not a folder" in one_error_line(kit("diagnose", "--run", "no/such/folder"))


@pytest.mark.parametrize("args,says", [
    (["--run", "kit"], "is not a run folder"),
    (["--config", "cpu-lora", "--lora_r", "zero"], "lora_r"),
    (["--config", "cpu-lora", "--gpu", "T5"], "--gpu"),
])
def test_bad_input_is_one_error_line(args, says, capsys):
    """The same entry point as `python -m kit diagnose`, in this process (the command itself:
    the test above)."""
    from kit.__main__ import main
    assert main(["diagnose", *args]) == 2
    out = capsys.readouterr()
    assert out.err.strip().startswith("error: ") and len(out.err.strip().splitlines()) == 1
    assert says in out.err and "Traceback" not in out.err + out.out


def test_a_lora_b_whose_output_never_reaches_the_loss_is_caught(tiny, batch):
    model = prepare_model(tiny[0], "lora", lora_dropout=0.0)
    cut = next(m for n, m in model.named_modules() if n.endswith("q_proj.lora_B.default"))
    cut.register_forward_hook(lambda module, inputs, output: output * 0)    # its update is thrown away
    found, _ = dg.check_gradients(model, batch)
    assert names(found) == {"lora-b-zero-gradient"} and "1 lora_B" in found[0].message
