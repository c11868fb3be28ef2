"""Damaged files: a truncated or corrupt file gets one clear error naming it and the fix, and
a damaged checkpoint never costs the steps an older intact one holds."""
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from kit.engine import checkpoint
from kit.engine.adapters import load_adapter, save_adapter, save_full
from kit.engine.data import make_task
from kit.engine.train import finetune, prepare_model
from kit.files import DamagedFileError, check_tensors, read_tensors
from kit.machine.models import load_model
from kit.scratch.quant import quantize

DATA = make_task("dates", n_train=24, n_val=8, n_test=0, seed=0)
RUN = dict(max_steps=6, per_device_train_batch_size=4, save_steps=2, disable_tqdm=True, seed=0)


def train(folder, **extra):
    model, tok = load_model("tiny-llama")
    return finetune(model, tok, DATA, "lora", checkpoint_dir=folder, **(RUN | extra))


def truncate(path, keep: float = 0.5):
    """Cut a file to `keep` of its bytes, as a copy or save that stopped early would."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def losses(result):
    return [s["loss"] for s in result.history.steps]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted run: what every resumed run must reproduce."""
    return train(tmp_path_factory.mktemp("whole"))


@pytest.fixture(scope="module")
def stopped_once(tmp_path_factory):
    """A run stopped after 4 of 6 steps: checkpoint-000002 and checkpoint-000004."""
    folder = tmp_path_factory.mktemp("stopped") / "run"
    train(folder, stop_after=4)
    assert [p.name for p in checkpoint.checkpoints(folder)] == ["checkpoint-000002", "checkpoint-000004"]
    return folder


@pytest.fixture
def stopped(stopped_once, tmp_path):
    """A private copy of the stopped run's checkpoints, free to damage."""
    return shutil.copytree(stopped_once, tmp_path / "run")


def fresh_run(folder):
    """A fresh LoRA tiny-llama with the optimizer, scaler and settings finetune would use."""
    model, _ = load_model("tiny-llama")
    torch.manual_seed(0)
    model = prepare_model(model, "lora")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    settings = json.loads((folder / "checkpoint-000002" / "state.json").read_text())["settings"]
    return model, optimizer, scaler, settings


# ---------------------------------------------------------------------------- the reader
DAMAGE = {  # name: (bytes of a good file -> damaged bytes, words the message must hold)
    "truncated data": (lambda data, n: data[:-5], r"has 1,\d{3} bytes where its header describes"),
    "header only": (lambda data, n: data[:8 + n], r"truncated"),
    "cut in the header": (lambda data, n: data[:8 + n // 2], r"header length says \d+ bytes but only"),
    "header length too large": (lambda data, n: (10**9).to_bytes(8, "little") + data[8:],
                                r"header length says 1,000,000,000 bytes"),
    "bad header JSON": (lambda data, n: data[:8] + b"{" * n + data[8 + n:], r"not valid safetensors JSON"),
    "empty": (lambda data, n: b"", r"0 bytes long"),
    "extra bytes": (lambda data, n: data + b"junk", r"extra bytes"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_safetensors_file_raises_one_clear_error(tmp_path, kind):
    good = tmp_path / "good.safetensors"
    save_file({"a": torch.randn(100), "b": torch.randn(16, 16)}, str(good))
    data = good.read_bytes()
    damage, words = DAMAGE[kind]
    bad = tmp_path / "adapter_model.safetensors"
    bad.write_bytes(damage(data, int.from_bytes(data[:8], "little")))
    assert set(read_tensors(good)) == {"a", "b"} and check_tensors(good) is None
    for read in (read_tensors, check_tensors):
        with pytest.raises(DamagedFileError, match=words) as caught:
            read(bad, what="adapter")
        message = str(caught.value)
        assert str(bad) in message and "save_adapter(model, path)" in message, message
        assert isinstance(caught.value, ValueError) and caught.value.path == bad


def test_a_missing_file_is_named_with_the_fix(tmp_path):
    with pytest.raises(DamagedFileError, match=r"model\.safetensors' is damaged: it does not exist.*"
                                               r"Save the model again"):
        read_tensors(tmp_path / "model.safetensors", what="model")


# ---------------------------------------------------------------------------- adapters and models
def test_a_truncated_adapter_is_refused_before_peft_touches_the_model(tiny, tmp_path):
    model, _ = tiny
    model = prepare_model(model, "lora")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
    path = save_adapter(model, tmp_path / "adapter")["path"]
    truncate(tmp_path / "adapter" / "adapter_model.safetensors")
    base, _ = load_model("tiny-llama")
    with pytest.raises(DamagedFileError, match=r"adapter_model\.safetensors' is damaged: .*truncated.*"
                                               r"Re-save it from the trained model"):
        load_adapter(base, path)
    assert not any("lora_" in name for name, _ in base.named_parameters())  # left as it was

    (tmp_path / "adapter" / "adapter_config.json").write_text('{"peft_type": "LO')
    with pytest.raises(DamagedFileError, match=r"adapter_config\.json' is damaged: it is not valid JSON"):
        load_adapter(base, path)


def test_a_truncated_saved_model_is_named_by_load_model(tiny, tmp_path):
    model, tok = tiny
    save_full(model, tmp_path / "saved", tokenizer=tok)
    assert load_model(str(tmp_path / "saved"))[0] is not None  # intact: loads
    truncate(tmp_path / "saved" / "model.safetensors", keep=0.9)
    with pytest.raises(DamagedFileError, match=r"model\.safetensors' is damaged: it has [\d,]+ bytes "
                                               r"where its header describes [\d,]+ \(truncated.*Save the "
                                               r"model again"):
        load_model(str(tmp_path / "saved"))


def test_quantize_refuses_nan_and_inf_with_their_counts():
    w = torch.randn(8, 16)
    w[0, :3] = float("nan")
    w[1, 0], w[2, 5] = float("inf"), -float("inf")
    with pytest.raises(ValueError, match=r"3 NaN and 2 inf values out of 128 \(shape \(8, 16\)\).*"
                                         r"torch\.nan_to_num"):
        quantize(w, "nf4")
    assert quantize(torch.nan_to_num(w), "nf4").dequantize().isfinite().all()  # the fix works


# ---------------------------------------------------------------------------- checkpoints
def test_a_truncated_checkpoint_resumes_from_the_older_one(whole, stopped):
    truncate(stopped / "checkpoint-000004" / "trainable.safetensors")
    listed = {}

    def look(record):  # what is on disk while the resumed run trains
        listed[record["step"]] = [p.name for p in checkpoint.checkpoints(stopped)]

    with pytest.warns(UserWarning, match=r"checkpoint-000004.*damaged \(trainable\.safetensors: .*"
                                         r"truncated.*resumes from the older checkpoint-000002"):
        rest = train(stopped, on_step=look)
    assert rest.finished and rest.history.resumed_at == [2]
    assert [s["step"] for s in rest.history.steps] == list(range(1, 7))  # continuous, no repeats
    assert losses(rest) == pytest.approx(losses(whole), rel=1e-5)
    assert listed[3] == ["checkpoint-000002"]  # the intact one is kept, the damaged one moved away
    assert (stopped / "damaged-checkpoint-000004" / "trainable.safetensors").exists()
    assert [p.name for p in checkpoint.checkpoints(stopped)] == ["checkpoint-000004", "checkpoint-000006"]


def test_pruning_after_a_resume_never_deletes_the_intact_checkpoint(stopped):
    truncate(stopped / "checkpoint-000004" / "optimizer.safetensors")
    model, optimizer, scaler, settings = fresh_run(stopped)
    with pytest.warns(UserWarning, match="checkpoint-000004"):
        state = checkpoint.resume(stopped, model, optimizer, scaler, settings)
    assert state["step"] == 2 and state["path"] == str(stopped / "checkpoint-000002")
    checkpoint.save(stopped, 3, model, optimizer, scaler, state["history"], settings, keep=2)
    assert [p.name for p in checkpoint.checkpoints(stopped)] == ["checkpoint-000002", "checkpoint-000003"]


@pytest.mark.parametrize("text, reason", [('{"step": 4, "hist', "it is not valid JSON"),
                                          ('{"step": 4}', "it lacks history, settings, optimizer, scaler")])
def test_a_corrupt_state_json_is_damage(stopped, text, reason):
    (stopped / "checkpoint-000004" / "state.json").write_text(text)
    model, optimizer, scaler, settings = fresh_run(stopped)
    with pytest.warns(UserWarning, match=rf"checkpoint-000004.*state\.json: {reason}"):
        state = checkpoint.resume(stopped, model, optimizer, scaler, settings)
    assert state["step"] == 2 and (stopped / "damaged-checkpoint-000004").is_dir()


def test_every_checkpoint_damaged_is_a_clear_error_and_changes_nothing(stopped):
    for path in checkpoint.checkpoints(stopped):  # trainable.safetensors intact, optimizer not
        truncate(path / "optimizer.safetensors")
    model, optimizer, scaler, settings = fresh_run(stopped)
    before = {k: t.clone() for k, t in checkpoint.trainable_state(model).items()}  # not views
    with pytest.raises(DamagedFileError, match=r"Every checkpoint in .* is damaged.*checkpoint-000004 "
                                               r"\(optimizer\.safetensors: .*checkpoint-000002.*Delete the"):
        checkpoint.resume(stopped, model, optimizer, scaler, settings)
    after = checkpoint.trainable_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing half-loaded
    assert not optimizer.state
    assert len(checkpoint.checkpoints(stopped)) == 2  # nothing renamed: the user decides


def test_other_settings_are_not_damage(stopped):
    truncate(stopped / "checkpoint-000004" / "rng.safetensors")
    with pytest.raises(ValueError, match=r"lora_r: 8 then, 4 now") as caught:
        train(stopped, lora_r=4)
    assert not isinstance(caught.value, DamagedFileError)
    assert len(checkpoint.checkpoints(stopped)) == 2  # nothing renamed
