# `make book` and `make test` do all set-up on a fresh machine (Python 3.11, CPU); see README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install book lab test test-fast check-book browser-test report bench sweep gpu-check clean

$(INSTALLED): requirements.txt requirements-nodeps.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install --no-deps -e .
	@touch $@

install: $(INSTALLED)

# Executes every chapter whose code changed (default parameters, CPU unless a GPU is present; one progress line per
# cell), then builds the HTML. Warnings are errors, so a failed cell or a broken reference fails the build.
book: $(INSTALLED)
	timeout 5400 $(BIN)/diffgen book .

# JupyterLab on the chapters, with live panels (and MyST rendered by jupyterlab-myst).
lab: $(INSTALLED)
	$(BIN)/jupyter lab book/ $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

# One pytest-xdist worker per core, each with its share of the threads; the workers share one smoke build of the
# book (tests/conftest.py).
PARALLEL := -n auto

# The whole suite: unit tests, every chapter at the smoke preset (once, in the smoke build of the real book:
# `diffgen book . --preset smoke --build-dir` into a temporary folder, the same _toc.yml, extension and
# --warningiserror), the paper path on fixture files, sweeps, several processes. The default-preset book executes
# only in `make book`; `make check-book` checks it.
test: $(INSTALLED)
	$(BIN)/python -m pytest $(PARALLEL)

# The inner loop: `pytest -m "not slow"`. It leaves out every test marked notebook, processes or slow (each says
# why; pyproject.toml): no notebook executes (no chapter, no book build), no other process starts (no torchrun,
# Dask, diffgen command, benchmark script or memory worker), nothing takes a minute.
test-fast: $(INSTALLED)
	$(BIN)/python -m pytest -m "not slow" $(PARALLEL)

# The book `make book` built, checked where it lies (tests/test_built_book.py): every page there and offline,
# chapter 2's figures numbered and cited, the introduction's claims table against `diffgen report`, every notebook
# executed by this code with the notebooks' own parameters. `make test` runs the same checks on its smoke build.
check-book: $(INSTALLED)
	DIFFGEN_BUILT_BOOK=$(CURDIR) $(BIN)/python -m pytest tests/test_built_book.py -v -p no:cacheprovider

# The built book (run `make book` first) and every chapter in a real JupyterLab, in Debian's chromium
# (/usr/bin/chromium: apt-get install -y chromium) driven by Playwright, every host but localhost blocked.
# Screenshots: _build/screenshots/.
browser-test: $(INSTALLED)
	DIFFGEN_BROWSER_HTML=$(CURDIR)/_build/html DIFFGEN_BROWSER_LAB=1 $(BIN)/python -m pytest tests/test_browser.py \
		tests/test_jupyterlab.py -v -p no:cacheprovider

# The paper's claims against what the last book build measured (book/*.results.json); RUN=runs/<name> for a run.
report: $(INSTALLED)
	$(BIN)/diffgen report $(RUN)

# The sweeps behind book/where_claims_hold.ipynb, on a Dask LocalCluster: chapter 3 at its default scale over
# train_steps, each run measuring C4 at 5 training-set sizes; chapter 4 over train_steps, C5b at 2000 (its default),
# 4000 and 8000 steps (cold: about an hour on 2 cores, the 8000-step point the longest). Points already computed by
# the current diffgen source are kept; trained nets come from the training cache. The book keeps the results files.
SWEEPS := book/sweeps
sweep: $(INSTALLED)
	$(BIN)/diffgen sweep ch3 -p train_steps 1000,2000,4000 --set n_sizes 5 --out $(SWEEPS)/ch3
	$(BIN)/diffgen sweep ch4 -p train_steps 8000,4000,2000 --out $(SWEEPS)/ch4
	find $(SWEEPS) -type f ! -name '*.json' -delete

bench: $(INSTALLED)
	$(BIN)/python benchmarks/bench_empirical.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_chapters.py

# On a machine with one CUDA GPU and the project installed (README: GPU): writes CIFAR-10-shaped fixture files, runs
# every chapter at the smoke preset and at the paper presets cut to 300 training steps on CUDA, then bench_gpu.py;
# one summary table (status, seconds, peak GPU and host memory), exit 1 on any failure. Without a GPU it says so
# and exits 0. PY=python3 for an interpreter outside .venv (e.g. a GPU image's, with PYTHONPATH naming the runtime).
PY ?= $(BIN)/python
gpu-check:
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf _build runs book/*.results.json
