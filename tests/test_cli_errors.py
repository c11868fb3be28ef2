"""Every user error of `python -m kit <command>` is one line, `error: ...` on stderr, and exit
code 2 (kit.errors): bad data rows (named by file and line), bad recipe files, bad knob values,
unknown models and methods, missing or damaged files. A bug keeps its traceback, `--debug`
shows the traceback of a user error too, and `--skip_bad_rows true` skips the rows that cannot
be used, says how many and records it. Each case runs the real command in a subprocess; the
errors come before any model loads."""
import json
import subprocess
import sys

import pytest
import torch
from test_finetune_cli import ROOT, SMOKE, _env
from test_formats import CHAT, write_jsonl

GOOD = CHAT[1]  # a user turn and the assistant's answer


def kit(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "kit", *map(str, args)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(run) -> str:
    """The one `error:` line the command printed (and checks it exited 2 without a traceback)."""
    output = run.stdout + run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert run.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert len(errors) == 1 and "error:" not in run.stdout, output[-3000:]
    assert run.stderr.strip().splitlines()[-1] == errors[0], output[-3000:]   # said last
    return errors[0]


def chat_file(path, bad_turns, blank_lines=0):
    """A conversation file: a good row, blank lines, then a row whose messages are bad_turns."""
    write_jsonl(path, [GOOD])
    with path.open("a") as f:
        f.write("\n" * blank_lines + json.dumps({"messages": bad_turns}) + "\n")
    return path


# ---------------------------------------------------------------------------- data rows
@pytest.mark.slow
@pytest.mark.parametrize("bad_turns, said", [
    ([{"role": "user", "content": "hi"}], "row 2 (line 3): the conversation ends on a user turn"),
    ([{"role": "human", "content": "hi"}, {"role": "assistant", "content": "yo"}],
     "row 2 (line 3), messages[0].role: unknown role 'human'. Use one of ['system', 'user', 'assistant']"),
    ([{"role": "user", "content": " "}, {"role": "assistant", "content": "yo"}],
     "row 2 (line 3), messages[0].content: the user turn is empty"),
])
def test_a_bad_conversation_row_is_one_line_naming_file_and_line(tmp_path, bad_turns, said):
    data = chat_file(tmp_path / "bad.jsonl", bad_turns, blank_lines=1)   # row 2 is on line 3
    run = kit("finetune", "--model", "tiny-llama", "--data_file", data, "--output_dir", tmp_path / "out")
    line = one_error_line(run)
    assert line.startswith(f"error: {data}, {said}") and "--skip_bad_rows true" in line, line
    assert not (tmp_path / "out").exists()   # stopped before the run folder, before any model


@pytest.mark.slow
def test_a_row_without_a_response_names_its_line_in_jsonl_and_its_row_in_csv(tmp_path):
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "c"}\n')
    line = one_error_line(kit("finetune", "--model", "tiny-llama", "--data_file", jsonl))
    assert f"error: {jsonl}, row 2 (line 3), response: missing or empty" in line, line
    csv = tmp_path / "pairs.csv"
    csv.write_text("prompt,response\na,b\nc,d\ne,\n")
    line = one_error_line(kit("finetune", "--model", "tiny-llama", "--data_file", csv))
    assert f"error: {csv}, row 3, response: missing or empty" in line, line


@pytest.mark.slow
@pytest.mark.parametrize("where", ["first", "last"])
def test_debug_shows_the_traceback_of_a_user_error(tmp_path, where):
    data = chat_file(tmp_path / "bad.jsonl", [{"role": "user", "content": "hi"}])
    args = ["finetune", "--model", "tiny-llama", "--data_file", data]
    run = kit(*(["--debug", *args] if where == "first" else [*args, "--debug"]))
    assert run.returncode == 2 and "Traceback" in run.stderr, run.stderr[-3000:]
    assert "DataError" in run.stderr and run.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.slow
def test_skip_bad_rows_skips_them_says_how_many_and_records_it(tmp_path):
    data = write_jsonl(tmp_path / "mixed.jsonl", [GOOD] * 20)
    with data.open("a") as f:   # rows 21 and 22, on lines 22 and 23
        f.write("\n" + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"
                + json.dumps({"messages": []}) + "\n")
    out = tmp_path / "out"
    run = kit("finetune", "--config", "cpu-lora", *SMOKE, "--max_steps", "2", "--eval_examples", "0",
              "--data_file", data, "--output_dir", out, "--skip_bad_rows", "true")
    assert run.returncode == 0, run.stderr[-3000:]
    assert (f"{data}: skipped 2 of 22 rows that cannot be used (first: line 22: the conversation "
            "ends on a user turn") in run.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_rows"] == 2 and summary["finished"]


# ---------------------------------------------------------------------------- recipes and knobs
@pytest.mark.slow
@pytest.mark.parametrize("text, said", [
    ("max_steps: 3\nlora_r: [8\n", "recipe.yaml:3 is not valid YAML"),
    ("max_steps: 3\nlerning_rate: 1e-4\n",
     "Unknown knob 'lerning_rate' (in recipe.yaml:2). Did you mean 'learning_rate'?"),
    ("lora_r: abc\n", "lora_r must be a whole number; got 'abc'. Default: 8 (in recipe.yaml:1)"),
])
def test_a_bad_recipe_file_is_one_line_naming_the_file_and_line(tmp_path, text, said):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    assert said in one_error_line(kit("finetune", "--config", recipe))


@pytest.mark.slow
def test_a_damaged_recipe_in_the_run_folder_to_resume_is_one_line(tmp_path):
    (tmp_path / "checkpoints" / "checkpoint-000001").mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint-000001" / "state.json").write_text("{}")
    (tmp_path / "recipe.yaml").write_text("lora_r: [8\n")
    line = one_error_line(kit("finetune", "--model", "tiny-llama", "--output_dir", tmp_path))
    assert "recipe.yaml (the recipe of the run to resume) is damaged" in line and "--resume false" in line


@pytest.mark.slow
@pytest.mark.parametrize("args, said", [
    (["--lora_r", "-1"], "error: r must be an integer >= 1, got -1 (lora_r in kit.engine.train.TrainConfig)."),
    (["--method", "foo"], "error: method must be one of ['full', 'lora', 'qlora']; got 'foo' (--method)"),
    (["--model", "no-such-model"], "error: model: Unknown model name 'no-such-model'. Use one of"),
    (["--config", "no-such-recipe"], "error: --config 'no-such-recipe' is neither a file nor a recipe name"),
    (["--data_file", "no/such.jsonl"], "error: data_file 'no/such.jsonl' is not a file"),
])
def test_a_bad_knob_value_is_one_line_with_the_allowed_values(args, said):
    assert one_error_line(kit("finetune", *args)).startswith(said)


# ---------------------------------------------------------------------------- the other commands
def test_run_refuses_an_unknown_notebook_in_one_line(tmp_path):
    assert "--only '99' matches no notebook" in one_error_line(kit("run", "--only", "99", "--out", tmp_path))


@pytest.mark.slow
def test_lessons_name_a_missing_run_folder_or_a_damaged_results_file_in_one_line(tmp_path):
    assert "is not a run folder" in one_error_line(kit("lessons", "--run", tmp_path))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "00_setup.json").write_text('{"hardware": "cpu", ')   # cut short
    line = one_error_line(kit("lessons", "--run", tmp_path))
    assert "results file" in line and "00_setup.json' is damaged: it is not valid JSON" in line, line


@pytest.mark.slow
def test_a_folder_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("")
    line = one_error_line(kit("study", "--out", tmp_path / "a-file" / "study"))
    assert line.startswith("error: Not a directory: ") and "a-file" in line, line


@pytest.mark.slow
def test_chat_names_a_missing_or_damaged_adapter_in_one_line(tmp_path):
    assert "holds no saved adapter" in one_error_line(kit("chat", "--adapter", tmp_path / "none"))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", '
                                                 '"base_model_name_or_path": "tiny-llama"}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00")   # truncated
    line = one_error_line(kit("chat", "--adapter", adapter))
    assert "adapter_model.safetensors' is damaged" in line and "Re-save it" in line, line
    assert "--max-new-tokens must be >= 1; got 0" in one_error_line(
        kit("chat", "--adapter", adapter, "--max-new-tokens", "0"))
    (adapter / "adapter_config.json").write_text('{"peft_type": ')
    assert "adapter_config.json' is damaged" in one_error_line(kit("chat", "--adapter", adapter))


@pytest.mark.slow
def test_gpu_check_refuses_in_one_line(tmp_path):
    if not torch.cuda.is_available():
        assert "this machine has no CUDA GPU" in one_error_line(kit("gpu-check"))
    line = one_error_line(kit("gpu-check", "--allow-cpu", "--methods", "full,foo"))
    assert "--methods takes a comma-separated list from full, lora, qlora; got 'full,foo'" in line
    line = one_error_line(kit("gpu-check", "--allow-cpu", "--model", "no-such-model"))
    assert "--model: Unknown model name 'no-such-model'" in line


# ---------------------------------------------------------------------------- bugs
@pytest.mark.parametrize("bug, name", [("raise RuntimeError('a bug')", "RuntimeError: a bug"),
                                       ("json.loads('{')", "JSONDecodeError")])   # a library's ValueError
def test_a_bug_keeps_its_traceback(bug, name):
    """The real entry point with kit.machine.device.profile broken: a RuntimeError, or a ValueError
    raised inside a library rather than by a line of the kit, is a bug: the traceback stays."""
    code = ("import json, sys; import kit.machine.device\n"
            f"def broken(*a, **k): {bug}\n"
            "kit.machine.device.profile = broken\n"
            "from kit.__main__ import main; sys.exit(main(['device']))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" in run.stderr and name in run.stderr, run.stderr[-3000:]
    assert "error: " not in run.stderr
