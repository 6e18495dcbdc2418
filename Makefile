# `make book` and `make test` do all set-up on a fresh machine (Python 3.11, CPU); see README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install book test bench clean

$(INSTALLED): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --no-deps -e .
	@touch $@

install: $(INSTALLED)

# Executes every chapter with its default parameters (CPU unless a GPU is present), then builds the HTML.
# Warnings are errors, so a failed cell or a broken reference fails the build.
book: $(INSTALLED)
	timeout 3600 $(BIN)/jupyter-book build . --warningiserror --keep-going
	@echo "The book is at file://$(CURDIR)/_build/html/index.html"

test: $(INSTALLED)
	$(BIN)/python -m pytest

bench: $(INSTALLED)
	$(BIN)/python benchmarks/bench_empirical.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_chapters.py

clean:
	rm -rf _build runs book/*.results.json
