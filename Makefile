# Two commands do all set-up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/.dagster_home

.PHONY: demo test ui lint validate bench export search clean-data

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

## Search the stored images by text: make search Q="a photo of a cat" [K=20] [ARGS="--drop samples"].
K ?= 20
search: $(STAMP)
	$(BIN)/python -m core.search "$(Q)" --k $(K) $(ARGS)

## Run the speed benchmarks (about 4 minutes on 2 cores); JSON lands in data/bench/.
bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py --out data/bench/ingest.json
	$(BIN)/python benchmarks/embed.py --out data/bench/embed.json
	$(BIN)/python benchmarks/extract_client.py --out data/bench/extract_client.json
	$(BIN)/python benchmarks/search.py --out data/bench/search.json

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## Remove the demo warehouse, drops and Dagster instance (sample images stay).
clean-data:
	rm -rf data/warehouse.duckdb data/warehouse.duckdb.* data/drops data/bench $(DAGSTER_HOME)
