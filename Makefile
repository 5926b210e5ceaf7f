# Two commands on a fresh machine with only python3:  make demo  /  make test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The page's browser test drives Debian's chromium (Playwright's own download is not used).
BROWSER_STAMP := $(VENV)/.browser
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-all lint format venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch 2.13.0 lies on local disk; a bare `torch` would fetch a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# openai/DALL-E's dVAE package, to test the weight converter against; without its
	# requirements, which would bring torchvision (it does not import beside this torch).
	$(PY) -m pip install -q --no-deps "DALL-E==0.1"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dalle demo --out outputs/demo

$(BROWSER_STAMP):
	command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	touch $(BROWSER_STAMP)

test: $(STAMP) $(BROWSER_STAMP)
	DALLE_BROWSER_REQUIRED=1 $(PY) -m pytest -q

test-all: $(STAMP) $(BROWSER_STAMP)
	DALLE_BROWSER_REQUIRED=1 $(PY) -m pytest -q -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) outputs .pytest_cache
