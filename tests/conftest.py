"""Shared fixtures. Models are loaded from the kit's cache (`python -m kit prepare`)."""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Under pytest-xdist (-n N) the cores are shared out among the N workers, and so among the
# notebook kernels and commands they start (they inherit OMP_NUM_THREADS): more threads than
# cores make each process's threads wait on the others'.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
if WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def tokenizer():
    """The bundled SmolLM2 tokenizer (shared; do not modify)."""
    from kit.machine.models import load_model
    return load_model("tiny-llama")[1]


@pytest.fixture
def tiny():
    """A fresh random tiny-llama (3.3M parameters) and its tokenizer, per test."""
    from kit.machine.models import load_model
    return load_model("tiny-llama")


@pytest.fixture
def bundled():
    """A fresh SmolLM2-135M-Instruct in fp32 (about 3 s to load), per test."""
    from kit.machine.models import load_model
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def bundled_shared():
    """One SmolLM2-135M-Instruct for the whole session: read-only use (evaluation)."""
    from kit.machine.models import load_model
    return load_model("smollm2-135m")


def micro_llama(seed: int = 0):
    """A 2-layer Llama with a 128-token vocabulary, built in milliseconds (no tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config).eval()


def run_notebook(name: str, folder, **overrides) -> dict:
    """Execute notebooks/<name>.ipynb headless into `folder` with its smoke parameters (and
    `overrides`), and return the results it recorded (results/<name>.json)."""
    import json
    from pathlib import Path

    from kit.commands.runner import NOTEBOOKS, execute_smoke, smoke_parameters

    path = NOTEBOOKS / f"{name}.ipynb"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    outcome = execute_smoke(path, folder, {**smoke_parameters(path), **overrides})
    assert outcome.ok, f"{name}: {outcome.error} (cell {outcome.cell})"
    return json.loads((folder / "results" / f"{name}.json").read_text())


def recorded_run(name: str):
    """A module fixture: notebooks/<name>.ipynb run once with its smoke parameters for all the
    tests of a file, each asserting one claim. -> (folder, the smoke parameters, the results)."""
    @pytest.fixture(scope="module")
    def recorded(tmp_path_factory):
        from kit.commands.runner import NOTEBOOKS, smoke_parameters

        folder = tmp_path_factory.mktemp(f"run{name[:2]}")
        return folder, smoke_parameters(NOTEBOOKS / f"{name}.ipynb"), run_notebook(name, folder)
    return recorded


# The longest test files (a few minutes each on 2 cores), longest first: run first, so that
# under pytest-xdist no worker is left with a long file at the end while the other waits.
LONGEST_FIRST = ["test_notebooks_09.py", "test_notebooks_06.py", "test_notebooks_07.py", "test_notebooks_08.py", "test_notebooks_02.py",
                 "test_train.py", "test_browser.py", "test_finetune_cli.py", "test_notebooks_04.py",
                 "test_evaluate.py", "test_notebooks_03.py", "test_notebooks_01.py", "test_notebooks_05.py"]


def pytest_collection_modifyitems(items):
    """A test that loads the bundled 135M model (fixtures `bundled`, `bundled_shared`) is slow:
    `make test-fast` (-m "not slow ...") leaves it out. The longest files go first."""
    for item in items:
        if {"bundled", "bundled_shared"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: files keep their order


def assert_exercises(results: dict, wrong: dict) -> None:
    """Every exercise the notebook recorded passed with its solution (SOLUTIONS = True), and its
    check says "not yet" to an unanswered exercise and to the `wrong` answer given here
    ({number: a wrong answer}): both directions of every check, on the facts the notebook measured."""
    from kit.view import check

    name = results["notebook"]
    recorded = {int(k): v for k, v in results["exercises"].items()}
    assert recorded and set(recorded) == set(wrong), (sorted(recorded), sorted(wrong))
    for number, ex in sorted(recorded.items()):
        fn = check.check_of(name, number)
        assert ex["ok"] is True, (name, number, ex)
        assert fn(ex["answer"], **ex["facts"]) is True
        assert fn(None, **ex["facts"]) is False, (name, number, "an unanswered exercise passed")
        assert fn(wrong[number], **ex["facts"]) is False, (name, number, wrong[number])
