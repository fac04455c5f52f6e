# Two commands do all set-up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/.dagster_home

.PHONY: demo test ui lint validate bench bench-peer-venv export clean-data

# clip-retrieval, the embedding benchmark's peer, in a venv of its own: its pins conflict with
# ours (numpy<2, open_clip<3) and its clip-anytorch imports pkg_resources, which setuptools 70+
# dropped; torch 2.14 asks for setuptools>=77 (only torch.utils.cpp_extension uses it), so
# setuptools is downgraded in a second step. Same torch as ours: the comparison is the pipeline.
PEER_VENV := .venv-clip-retrieval
PEER_STAMP := $(PEER_VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet ".[dev]"
	touch $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

## Materialize the whole chain on the bundled sample images and print a summary from SQL.
demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m orchestration.demo

## Run the test suite (what CI runs).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

## Open the Dagster UI on http://127.0.0.1:3000 with the persistent instance.
ui: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

validate: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster definitions validate -w workspace.yaml

## Export the task tables (Parquet, JSONL) and LLaVA-style instruction data to data/exports/.
export: $(STAMP)
	$(BIN)/python -m core.quality.exports --out data/exports

$(PEER_STAMP): $(STAMP)
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install --quiet "numpy<2" \
		"torch==$$($(BIN)/python -c 'import torch; print(torch.__version__.split("+")[0])')" \
		"torchvision==$$($(BIN)/python -c 'import torchvision; print(torchvision.__version__.split("+")[0])')" \
		"clip-retrieval==2.45.0"
	$(PEER_VENV)/bin/pip install --quiet "setuptools<70"
	touch $(PEER_STAMP)

## The embedding benchmark's peer (clip-retrieval) in its own venv, .venv-clip-retrieval/.
bench-peer-venv: $(PEER_STAMP)

## Run the speed benchmarks (under 10 minutes on 2 cores); JSON lands in data/bench/.
bench: $(STAMP) $(PEER_STAMP)
	$(BIN)/python benchmarks/ingest.py --out data/bench/ingest.json
	$(BIN)/python benchmarks/embed.py --out data/bench/embed.json
	$(BIN)/python benchmarks/extract_client.py --out data/bench/extract_client.json

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## Remove the demo warehouse, drops and Dagster instance (sample images stay).
clean-data:
	rm -rf data/warehouse.duckdb data/warehouse.duckdb.* data/drops data/bench $(DAGSTER_HOME)
