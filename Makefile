# Every target bootstraps .venv from nothing but python3 (idempotent: re-installs only when
# pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DB ?= ./flytecache.db

.PHONY: serve test test-slow bench bench-quick bench-publish lint docs screenshots clean

$(BIN)/python:
	@echo "make: creating $(VENV) (first run only)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	@echo "make: installing flytecache into $(VENV) (about a minute the first time)"
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	@echo "make: installing flytecache with its test extras, the Flyte 2 SDK and flytekit into $(VENV) (a few minutes the first time)"
	$(BIN)/python -m pip install -q -e '.[test,postgres,flyte,flytekit]'
	@touch $@ $(VENV)/.installed-base

serve: $(VENV)/.installed-base
	$(BIN)/flytecache serve --db $(DB)

# Two workers (one per core): most tests wait on real processes, servers and SDK start-ups.
test: $(VENV)/.installed-test
	$(BIN)/pytest -n 2

test-slow: $(VENV)/.installed-test
	$(BIN)/pytest -m slow -s

docs: $(VENV)/.installed-test
	$(BIN)/python -m flytecache.cli._docs

# The web view's screenshots in docs/img/ (docs/web-view.md); needs Debian's chromium and
# chromium-driver, like the browser tests.
screenshots: $(VENV)/.installed-test
	$(BIN)/python -m scripts.web_view_screenshots docs/img

# Both write results, pages and plots to benchmarks/out/ (untracked); bench-publish renders the
# latest of them into docs/benchmarks*.md and docs/img/ and keeps its JSON in benchmarks/results/.
bench: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.run

bench-quick: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.run --quick

bench-publish: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.report --publish

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check flytecache tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
