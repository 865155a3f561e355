# Agent Forge: the README's two commands are `make run` and `make test`.
# Both create .venv with pinned packages (CPU torch 2.13.0) and register the `agent-forge` Jupyter kernel in it.

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PRESET  ?= tiny
RUN_ID  ?=
ARGS    ?=
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: install run test test-lib test-py docs bench reliability lab dashboard

$(STAMP): requirements.lock pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name agent-forge --display-name "Agent Forge" >/dev/null
	touch $(STAMP)

install: $(STAMP)

## The main job: the end-to-end pipeline on the embedded default data, CPU preset.
run: install
	$(BIN)/agent-forge run --preset $(PRESET) $(if $(RUN_ID),--run-id $(RUN_ID)) $(ARGS)

## Every test: the library notebooks (nbdev-test) and pytest, which also runs every phase notebook at smoke size
## through the real runner (tests/test_pipeline_e2e.py).
test: install
	@$(MAKE) --no-print-directory test-lib test-py

test-lib:
	$(BIN)/nbdev-test --n-workers 2 --timing

test-py:
	@$(BIN)/pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests in tests/: that is a failure here"; exit 1; fi; exit $$rc

docs: install
	$(BIN)/agent-forge docs

bench: install
	$(BIN)/agent-forge bench --preset all

## SIGKILL the runner 20 times across Phases 1-4 at smoke size, resume each time, compare with an uninterrupted run
## (tests/reliability/kill_resume.py; several minutes on a 2-core CPU).
reliability: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python tests/reliability/kill_resume.py --kills 20 --seed 12 $(ARGS)

## JupyterLab on the checkout with the `agent-forge` kernel (works as root); LAB_ARGS adds options, e.g. --port=8889
lab: install
	$(BIN)/jupyter lab --allow-root --no-browser --ServerApp.root_dir=$(CURDIR) \
		--MultiKernelManager.default_kernel_name=agent-forge $(LAB_ARGS)

## The Streamlit dashboard over runs/ (read-only toward the registries); ARGS adds options, e.g. --port 8502
dashboard: install
	$(BIN)/agent-forge dashboard $(ARGS)
