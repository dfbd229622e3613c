# Two entry points, each doing its own set-up on a fresh machine:
#   make run    build the retrieval index for the bundled sample and show the result
#   make test   run the test suite
# The virtual environment is (re)built whenever pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# torch/torchvision pinned to the releases this project is tested with (CPU here, CUDA-capable build).
TORCH   = torch==2.14.1 torchvision==0.29.1

# make run is a quick demo: 300 pretraining steps (about 1.5 minutes here) instead of the sample's
# budget of 1,100 (README, "Which recipe when"); it still beats both baselines, so it is promoted.
DEMO_STEPS ?= 300

.PHONY: run test query clean-artifacts

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test,pretrained]'
	touch $@

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

test: $(VENV)/.installed $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

clean-artifacts:
	rm -rf artifacts
