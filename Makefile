# Two entry points, each doing its own set-up on a fresh machine:
#   make run    build the retrieval index for the bundled sample and show the result
#   make test   run the test suite
#   make lock   write constraints.txt from the environment the tests passed in
# The virtual environment is (re)built whenever pyproject.toml or constraints.txt changes; every
# install takes the exact versions of constraints.txt. `make run` installs the runtime extras only,
# `make test` adds the test tools.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
LOCK    = constraints.txt
# torch/torchvision pinned to the releases this project is tested with (CPU here, CUDA-capable build).
# Plain pip, so a local package mirror configured for pip serves them.
TORCH   = torch==2.14.1 torchvision==0.29.1
# Everything a user runs: the app (serve), Dask scale-out, an S3 artifacts root, pretrained inits.
RUNTIME_EXTRAS = serve,dask,s3,pretrained

# make run is a quick demo: 300 pretraining steps (about 1.5 minutes here) instead of the sample's
# budget of 1,100 (docs/training/recipes.md, "Which recipe when"); it still beats both baselines, so it is promoted.
DEMO_STEPS ?= 300

.PHONY: run test lock query clean-artifacts

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) $(TORCH)
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[$(RUNTIME_EXTRAS)]'
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[$(RUNTIME_EXTRAS),test]'
	touch $@

# To move a version: install it into .venv (e.g. `.venv/bin/pip install prefect==X`, or widen a range in
# pyproject.toml and `pip install -e '.[...]'` without -c), run `make test`, then `make lock`.
lock: $(VENV)/.test-installed
	{ echo '# The exact versions the test suite passes with: lookalike, all its extras, torch and its CUDA libraries.'; \
	  echo '# pip constraints: `pip install -c constraints.txt ...` installs only what is asked for, at these versions.'; \
	  echo '# Written by `make lock` from .venv (docs/getting-started.md, "Set-up"); used by the Makefile and the Dockerfile.'; \
	  $(BIN)/python -m pip freeze --exclude-editable; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	touch $(VENV)/.installed $(VENV)/.test-installed

run: $(VENV)/.installed
	$(BIN)/lookalike run --steps $(DEMO_STEPS)
	$(BIN)/lookalike query --steps $(DEMO_STEPS) --row 0 --out artifacts/query-row-0.png

# The Prefect UI test drives Debian's chromium (never a downloaded browser); installed here when missing.
CHROMIUM ?= /usr/bin/chromium

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "the UI test needs Debian's chromium: sudo apt-get install chromium" >&2; exit 1; \
	fi

# The suite runs on every core (pytest-xdist), one test file per worker at a time so a file's module
# fixtures (a Prefect server stack, a built index) are made once; much of it waits on subprocesses
# and servers, so two workers on two cores finish well before one. `pytest tests/...` runs serially.
# mypy checks the package first (pyproject's [tool.mypy]); .mypy_cache keeps a re-run to seconds.
# The docs site builds offline and --strict (mkdocs.yml): a broken link, a page missing from the nav or a
# reference that no longer generates fails here (not with --quiet: it hides the warnings --strict counts);
# NO_MKDOCS_2_WARNING quietens mkdocs-material's end-of-life banner.
test: $(VENV)/.test-installed $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	$(BIN)/python -m pytest -n auto --dist loadfile

clean-artifacts:
	rm -rf artifacts
