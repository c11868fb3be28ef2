"""Checkpoints: an interrupted run, resumed, is the uninterrupted run (same losses, same
data, same weights), and nothing but safetensors and JSON is written."""
import pytest
import torch

from kit.engine import checkpoint
from kit.engine.data import make_task
from kit.engine.train import finetune
from kit.machine.models import load_model

DATA = make_task("dates", n_train=24, n_val=8, n_test=0, seed=0)
RUN = dict(max_steps=6, per_device_train_batch_size=4, eval_steps=3, save_steps=2, disable_tqdm=True,
           seed=0, trace_batches=True)


def fresh():
    return load_model("tiny-llama")


def train(folder, method="lora", **extra):
    model, tok = fresh()
    return finetune(model, tok, DATA, method, checkpoint_dir=folder, **(RUN | extra))


def trained_weights(result):
    return checkpoint.trainable_state(result.model)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_stopped_then_resumed_equals_uninterrupted(tmp_path, method):
    whole = train(tmp_path / "whole", method)
    part = train(tmp_path / "part", method, stop_after=4)
    assert not part.finished and [s["step"] for s in part.history.steps] == [1, 2, 3, 4]
    rest = train(tmp_path / "part", method)
    assert rest.finished and rest.history.resumed_at == [4]
    assert [s["step"] for s in rest.history.steps] == list(range(1, 7))  # continuous, no repeats
    assert [s["batch_crc"] for s in rest.history.steps] == [s["batch_crc"] for s in whole.history.steps]
    assert [s["loss"] for s in rest.history.steps] == pytest.approx(
        [s["loss"] for s in whole.history.steps], rel=1e-5)
    assert [e["step"] for e in rest.history.evals] == [0, 3, 6]
    a, b = trained_weights(whole), trained_weights(rest)
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    kept = checkpoint.checkpoints(tmp_path / "part")
    assert [p.name for p in kept] == ["checkpoint-000004", "checkpoint-000006"]  # keep=2
    files = {f.name for p in kept for f in p.iterdir()}
    assert files == {"trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"}


def test_ctrl_c_keeps_the_finished_steps(tmp_path):
    whole = train(tmp_path / "whole")

    def interrupt(record):
        if record["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "cut", on_step=interrupt)
    assert checkpoint.checkpoints(tmp_path / "cut")[-1].name == "checkpoint-000003"
    rest = train(tmp_path / "cut")
    assert rest.history.resumed_at == [3]
    assert [s["loss"] for s in rest.history.steps] == pytest.approx(
        [s["loss"] for s in whole.history.steps], rel=1e-5)


def test_a_finished_run_resumes_as_a_no_op_and_longer_runs_extend(tmp_path):
    first = train(tmp_path / "run", max_steps=4)
    again = train(tmp_path / "run", max_steps=4)
    assert again.history.steps == first.history.steps and again.history.resumed_at == [4]
    longer = train(tmp_path / "run", max_steps=6)  # max_steps may grow
    assert [s["step"] for s in longer.history.steps] == list(range(1, 7))


def test_resuming_with_other_settings_is_refused(tmp_path):
    train(tmp_path / "run", stop_after=2)
    with pytest.raises(ValueError, match=r"lora_r: 8 then, 4 now.*another output_dir"):
        train(tmp_path / "run", lora_r=4)
    with pytest.raises(ValueError, match="method: 'lora' then, 'full' now"):
        train(tmp_path / "run", method="full")


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    from conftest import micro_llama

    from kit.engine.train import prepare_model

    saved = train(tmp_path / "run", stop_after=2)
    other = prepare_model(micro_llama(), "lora")
    optimizer = torch.optim.AdamW([p for p in other.parameters() if p.requires_grad])
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    state = checkpoint.checkpoints(tmp_path / "run")[-1]
    settings = __import__("json").loads((state / "state.json").read_text())["settings"]
    with pytest.raises(ValueError, match="does not fit this model"):
        checkpoint.load(state, other, optimizer, scaler, settings)
    assert saved.checkpoint == str(state)


def test_an_unfinished_save_leaves_the_last_checkpoint(tmp_path):
    train(tmp_path / "run", stop_after=2)
    (tmp_path / "run" / ".checkpoint-000004.tmp-1").mkdir()  # a save killed half-way
    (tmp_path / "run" / "checkpoint-000005").mkdir()          # no state.json: incomplete
    assert [p.name for p in checkpoint.checkpoints(tmp_path / "run")] == ["checkpoint-000002"]
    assert train(tmp_path / "run").history.resumed_at == [2]
