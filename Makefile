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

.PHONY: install run test test-lib test-py test-pipelines docs bench clean-smoke

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

## Every test: library notebooks (nbdev-test), pytest, and the phase notebooks under nbval.
test: install
	@$(MAKE) --no-print-directory test-lib test-py test-pipelines

test-lib:
	$(BIN)/nbdev-test --n-workers 2 --timing

test-py:
	@$(BIN)/pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests in tests/: that is a failure here"; exit 1; fi; exit $$rc

test-pipelines: clean-smoke
	@$(BIN)/pytest -q --nbval-lax --nbval-kernel-name agent-forge --nbval-cell-timeout 1200 -p no:cacheprovider pipelines; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "nbval collected no phase notebooks in pipelines/: that is a failure here"; exit 1; fi; exit $$rc

clean-smoke:
	rm -rf runs/nbval-smoke

docs: install
	$(BIN)/agent-forge docs

bench: install
	$(BIN)/agent-forge bench --preset all
