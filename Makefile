# Two commands do all set-up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/.dagster_home

.PHONY: demo demo-lake lake-up lake-down sql postgresql test chromium ui lint validate bench bench-peer-venv export clean-data label-studio export-reviews import-reviews search \
	sglang-env sglang-demo

# The real SGLang server (CPU engine) lives in its own venv: its pins (torch CUDA build,
# transformers 5) differ from the project's. `make sglang-env` installs it once (~6.7 GB).
SGLANG_VENV := .venv-sglang
SGLANG_STAMP := $(SGLANG_VENV)/.installed

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

# Label Studio, for the review round trip, in its own venv (its pins clash with ours).
LS_VENV := .venv-label-studio
LS_STAMP := $(LS_VENV)/.installed
LABEL_STUDIO_VERSION := 1.23.2

$(LS_STAMP):
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --quiet "label-studio==$(LABEL_STUDIO_VERSION)"
	touch $(LS_STAMP)

$(SGLANG_STAMP): requirements/sglang-cpu.txt requirements/sglang-server.txt requirements/sglang-router.txt \
		tools/sglang_cpu/install_pth.py
	$(PYTHON) -m venv $(SGLANG_VENV)
	$(SGLANG_VENV)/bin/pip install --quiet --upgrade pip
	$(SGLANG_VENV)/bin/pip install --quiet -r requirements/sglang-cpu.txt
	$(SGLANG_VENV)/bin/pip install --quiet --no-deps -r requirements/sglang-server.txt
	$(SGLANG_VENV)/bin/pip install --quiet -r requirements/sglang-router.txt
	$(SGLANG_VENV)/bin/python tools/sglang_cpu/install_pth.py
	touch $(SGLANG_STAMP)

## Create .venv-sglang: released sglang 0.5.23 with its CPU engine (no GPU needed) and sglang-router.
sglang-env: $(SGLANG_STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

## Materialize the whole chain on the bundled sample images and print a summary from SQL.
demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m orchestration.demo

## PostgreSQL 15 (Debian's package) for the lake's catalog, on 127.0.0.1:$(LAKE_PORT) in .lake/
## (as the `postgres` user when run as root); the lake's Parquet files go to .lake/data/.
LAKE_PORT ?= 5433
LAKE_ENV = eval "$$($(BIN)/python -m tools.lakepg env --port $(LAKE_PORT))"
lake-up: $(STAMP)
	$(BIN)/python -m tools.lakepg up --port $(LAKE_PORT)

## Stop the lake's PostgreSQL (its data stays in .lake/).
lake-down: $(STAMP)
	$(BIN)/python -m tools.lakepg down --port $(LAKE_PORT)

## The demo chain on the lake (DuckLake: catalog in the PostgreSQL of `make lake-up`).
demo-lake: lake-up $(DAGSTER_HOME)/dagster.yaml
	$(LAKE_ENV) && $(BIN)/python -m orchestration.demo

## A read-only SQL prompt on the warehouse ($$IMAGE_PIPELINE_WAREHOUSE: the DuckDB file by
## default; LAKE=1 for the lake of `make lake-up`). On the file each statement opens and closes it.
sql: $(STAMP)
	@if [ -n "$(LAKE)" ]; then $(LAKE_ENV); fi; $(BIN)/python -m core.warehouse

## The demo chain with VLM backend `sglang`: the real SGLang server (CPU engine, tiny random
## Qwen2-VL) launched by the SGLangServer resource; prints the summary and images/s.
sglang-demo: $(STAMP) $(SGLANG_STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m orchestration.sglang_demo

## Run the test suite (what CI runs), the real SGLang server tests included.
## Label Studio and Chromium are installed first when they can be; without them the round-trip
## test against a real Label Studio server and the browser tests skip and say why.
test: $(STAMP) $(SGLANG_STAMP)
	-$(MAKE) label-studio
	-$(MAKE) chromium
	-$(MAKE) postgresql
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	IMAGE_PIPELINE_REQUIRE_SGLANG=1 $(BIN)/python -m pytest -n 2 --dist loadscope --no-loadscope-reorder

## Chromium for the browser tests: Debian's package, installed when missing and apt-get can
## (as root); otherwise say so and go on.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
	  echo "no chromium and no way to install it here: the browser tests will skip"

## PostgreSQL for the lake tests: Debian's package, installed when missing and apt-get can (as
## root); otherwise say so and go on (the lake tests then skip, except on CI where they fail).
postgresql:
	@test -x /usr/lib/postgresql/15/bin/initdb || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } || \
	  echo "no PostgreSQL 15 and no way to install it here: the lake tests will skip"

## Install Label Studio into .venv-label-studio and migrate its template database (~7 min once).
label-studio: $(STAMP) $(LS_STAMP)
	$(BIN)/python -m tests.fixtures.label_studio prepare

## Write a drop's review queue as Label Studio tasks: make export-reviews DROP=samples
export-reviews: $(STAMP)
	$(BIN)/python -m core.review export --drop "$(or $(DROP),samples)"

## Import Label Studio's JSON export into human_labels: make import-reviews FILE=export.json
import-reviews: $(STAMP)
	@test -n "$(FILE)" || { echo "usage: make import-reviews FILE=path/to/export.json"; exit 2; }
	$(BIN)/python -m core.review import "$(FILE)"

## Open the Dagster UI on http://127.0.0.1:3000 (UI_PORT) with the persistent instance, and the
## drop pages on http://127.0.0.1:3001 (IMAGE_PIPELINE_REPORTS_PORT) beside it; Ctrl-C stops both.
UI_PORT ?= 3000
ui: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m orchestration.ui --port $(UI_PORT)

validate: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m core.labels
	$(BIN)/dagster definitions validate -w workspace.yaml

## Export the task tables (Parquet, JSONL) and LLaVA-style instruction data to data/exports/.
export: $(STAMP)
	$(BIN)/python -m core.quality.exports --out data/exports

## Search the stored images by text: make search Q="a photo of a cat" [K=20] [ARGS="--drop samples"].
K ?= 20
search: $(STAMP)
	$(BIN)/python -m core.search "$(Q)" --k $(K) $(ARGS)

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

## Run the speed benchmarks (about 7 minutes on a quiet 2-core machine without the prefill
## benchmark, whose real-server run is timed in docs/extraction.md, and the multi-run benchmark,
## measured in docs/deploy.md at a smaller size; the search benchmark's 1M size included); JSON lands in data/bench/. SEARCH_SIZES: e.g. make bench SEARCH_SIZES=100000
SEARCH_SIZES ?= 100000 1000000
bench: $(STAMP) $(PEER_STAMP) $(SGLANG_STAMP)
	$(BIN)/python benchmarks/ingest.py --out data/bench/ingest.json
	$(BIN)/python benchmarks/embed.py --out data/bench/embed.json
	$(BIN)/python benchmarks/extract_client.py --out data/bench/extract_client.json
	$(BIN)/python benchmarks/prefill.py --out data/bench/prefill.json
	$(BIN)/python benchmarks/sensor_tick.py --out data/bench/sensor_tick.json
	$(BIN)/python benchmarks/review.py --out data/bench/review.json
	$(BIN)/python benchmarks/search.py --sizes $(SEARCH_SIZES) --out data/bench/search.json
	$(BIN)/python benchmarks/multirun.py --out data/bench/multirun.json

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## Remove the demo warehouse, drops and Dagster instance (sample images stay).
clean-data:
	rm -rf data/warehouse.duckdb data/warehouse.duckdb.* data/drops data/bench data/reports data/reviews \
		$(DAGSTER_HOME)
