# `make book` and `make test` do all set-up on a fresh machine (Python 3.11, CPU); see README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install book test browser-test report bench clean

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

# The built book (run `make book` first) in Debian's chromium (/usr/bin/chromium: apt-get install -y chromium),
# driven by Playwright, served on localhost with every other host blocked. Screenshots: _build/screenshots/.
browser-test: $(INSTALLED)
	DIFFGEN_BROWSER_HTML=$(CURDIR)/_build/html $(BIN)/python -m pytest tests/test_browser.py -v -p no:cacheprovider

# The paper's claims against what the last book build measured (book/*.results.json); RUN=runs/<name> for a run.
report: $(INSTALLED)
	$(BIN)/diffgen report $(RUN)

bench: $(INSTALLED)
	$(BIN)/python benchmarks/bench_empirical.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_chapters.py

clean:
	rm -rf _build runs book/*.results.json
