"""`python -m kit finetune`: what the command adds to the loop (tests/test_checkpoint.py holds
the loop's own stop/resume equalities): the run folder (recipe, history, summary, the adapter or
model), resuming with the same command, refusing another recipe, Ctrl-C's exit code and message,
and two processes (accelerate launch, gloo) that see different data and end with the same
weights. All on tiny-llama."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit.commands import finetune as finetune_cli
from kit.engine import checkpoint

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ["--model", "tiny-llama", "--max_steps", "4", "--per_device_train_batch_size", "2", "--n_train", "16",
         "--n_val", "4", "--eval_steps", "2", "--eval_examples", "3", "--max_length", "64",
         "--learning_rate", "1e-2"]


def read(folder, name):
    return json.loads((Path(folder) / name).read_text())


@pytest.mark.parametrize("recipe", ["cpu-lora", "cpu-qlora", "cpu-full"])
def test_cpu_recipe_stops_resumes_and_saves(recipe, tmp_path):
    out = ["--config", recipe, "--output_dir", str(tmp_path)]
    assert finetune_cli.main(SMOKE + out + ["--stop_after", "2"]) == 0
    first = read(tmp_path, "summary.json")
    assert (first["finished"], first["steps_done"]) == (False, 2)
    assert [p.name for p in checkpoint.checkpoints(tmp_path / "checkpoints")] == ["checkpoint-000002"]
    part = json.loads((tmp_path / "checkpoints/checkpoint-000002/state.json").read_text())["history"]

    assert finetune_cli.main(SMOKE + out) == 0  # the same command: carries on
    s = read(tmp_path, "summary.json")
    history = read(tmp_path, "history.json")
    assert s["finished"] and s["resumed_at"] == [2]
    assert [x["step"] for x in history["steps"]] == [1, 2, 3, 4]        # continuous
    assert history["steps"][:2] == part["steps"]                         # finished steps kept
    assert [e["step"] for e in history["evals"]] == [0, 2, 4]
    assert s["last_loss"] < s["first_loss"]
    assert 0 <= s["accuracy_before"] <= 1 and 0 <= s["accuracy_after"] <= 1
    if recipe == "cpu-full":
        assert s["trainable_parameters"] == s["parameters"]
        assert (tmp_path / "model" / "model.safetensors").exists()
    else:
        assert s["trainable_parameters"] < 0.02 * s["parameters"]
        assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
        assert s["quantization"] == ("nf4" if recipe == "cpu-qlora" else "none")
    assert "| exact match before -> after |" in (tmp_path / "summary.md").read_text()
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))


def test_resuming_another_recipe_is_refused_and_resume_false_starts_over(tmp_path, capsys):
    tiny = ["--config", "cpu-lora", "--output_dir", str(tmp_path)] + SMOKE + ["--eval_examples", "0"]
    assert finetune_cli.main(tiny + ["--stop_after", "2"]) == 0
    printed = capsys.readouterr().out   # no progress bar where stderr is no terminal: a line per step
    assert "step 1/4: loss " in printed and "step 2/4: loss " in printed and "step 3/4" not in printed
    assert finetune_cli.main(tiny + ["--lora_r", "4"]) == 2
    assert "lora_r: 8 then, 4 now" in capsys.readouterr().err
    assert finetune_cli.main(tiny + ["--max_steps", "5", "--stop_after", "1"]) == 0   # may change
    assert finetune_cli.main(tiny + ["--lora_r", "4", "--resume", "false"]) == 0
    s = read(tmp_path, "summary.json")
    assert s["finished"] and s["resumed_at"] == [] and s["steps_done"] == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    return os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_ctrl_c_checkpoints_the_finished_steps_and_the_command_resumes(tmp_path):
    cmd = [sys.executable, "-m", "kit", "finetune", "--config", "cpu-lora", "--model", "tiny-llama",
           "--output_dir", str(tmp_path), "--max_steps", "100000", "--per_device_train_batch_size", "2",
           "--n_train", "16", "--n_val", "4", "--eval_steps", "0", "--eval_examples", "0", "--save_steps", "0"]
    # SIGINT's default action even when the suite itself runs where SIGINT is ignored (a shell's
    # background job): an ignored SIGINT is inherited, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = []
        while not lines or not lines[-1].startswith("step 1/"):  # the first step is done
            lines.append(proc.stdout.readline())
            assert lines[-1] or proc.poll() is None, "".join(lines)
        time.sleep(1)  # ... and a few more
        proc.send_signal(signal.SIGINT)
        output = "".join(lines) + proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    assert "run the same command to resume" in output
    kept = checkpoint.checkpoints(tmp_path / "checkpoints")
    assert len(kept) == 1
    done = json.loads((kept[0] / "state.json").read_text())["step"]
    assert 1 <= done < 100000

    again = subprocess.run(cmd + ["--stop_after", "2"], cwd=ROOT, env=_env(), capture_output=True,
                           text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-2000:]
    s = read(tmp_path, "summary.json")
    assert s["resumed_at"] == [done] and s["steps_done"] == done + 2
    steps = [x["step"] for x in json.loads((checkpoint.checkpoints(tmp_path / "checkpoints")[-1]
                                            / "state.json").read_text())["history"]["steps"]]
    assert steps == list(range(1, done + 3))


@pytest.mark.slow
def test_two_processes_on_the_cpu_see_different_data_and_end_with_the_same_weights(tmp_path):
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
           "kit/recipes/accelerate/cpu-2proc.yaml", "--main_process_port", str(_free_port()),
           "-m", "kit", "finetune", "--config", "cpu-lora", "--model", "tiny-llama",
           "--output_dir", str(tmp_path), "--max_steps", "4", "--per_device_train_batch_size", "2",
           "--n_train", "16", "--n_val", "4", "--eval_steps", "2", "--eval_examples", "0", "--save_steps", "2"]
    run = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    ranks = [read(tmp_path / "processes", f"rank-{r}.json") for r in (0, 1)]
    assert [r["processes"] for r in ranks] == [2, 2]
    assert len(ranks[0]["batch_crc"]) == len(ranks[1]["batch_crc"]) == 4
    assert not set(ranks[0]["batch_crc"]) & set(ranks[1]["batch_crc"])  # different batches
    assert ranks[0]["weights_crc"] == ranks[1]["weights_crc"]            # identical weights
    s = read(tmp_path, "summary.json")
    assert s["processes"] == 2 and s["finished"] and s["steps_done"] == 4
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
