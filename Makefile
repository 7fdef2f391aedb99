# Two commands do the whole set-up on a fresh machine:
#   make demo   - create .venv, install fedfuse (CPU PyTorch 2.13.0), run the demo federation
#   make test   - the same set-up, then the whole test suite
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.fedfuse-installed

.PHONY: demo test lint bench browser

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedfuse demo

# the dashboard's browser test drives Debian's headless Chromium through its driver
APT_GET := $(if $(filter 0,$(shell id -u)),,sudo) apt-get
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { $(APT_GET) update -q && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -q --no-install-recommends chromium chromium-driver; }

test: $(STAMP) browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	bash benchmarks/run.sh
