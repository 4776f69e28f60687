# The two set-up commands are `make run` and `make test`; both create .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test lint index eval bench browser-deps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 first: it is a CPU wheel on this disk; any other spec pulls a CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

index: $(STAMP)
	$(BIN)/myositis-qa index --no-progress

run: $(STAMP)
	@test -f index/current/manifest.json || $(BIN)/myositis-qa index
	$(BIN)/myositis-qa serve

browser-deps: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: browser tests will be skipped"

test: $(STAMP) browser-deps
	$(BIN)/ruff check indexer app evals tests
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check indexer app evals tests
	$(BIN)/ruff format --check indexer app evals tests
	$(BIN)/mypy

eval: index
	$(BIN)/myositis-qa-eval run --questions evals/questions/dev.jsonl --out reports/dev

bench: index
	$(BIN)/myositis-qa-eval bench --questions evals/questions/dev.jsonl --out reports/bench

clean:
	rm -rf $(VENV) index reports .pytest_cache .mypy_cache .ruff_cache
