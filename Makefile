# Two commands do the whole setup on a fresh machine:  make demo  and  make test.
#
# TORCH_SPEC is what gets installed when the virtualenv has no torch yet. The default pins the CPU
# build available on CPU-only machines; on a GPU machine install your own torch into .venv first
# (or run `make VENV=/path/to/your/env ...`): an importable torch is never replaced.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,demo

.PHONY: all setup demo demo-assets test lint bench clean

all: test

$(PY):
	python3 -m venv $(VENV)

$(VENV)/.installed-$(EXTRAS): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "using installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
	  echo "installing $(TORCH_SPEC)"; $(PY) -m pip install -q "$(TORCH_SPEC)"; \
	fi
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

setup: $(VENV)/.installed-$(EXTRAS)

demo: setup
	$(VENV)/bin/skiptune demo

# Rebuild the shipped demo model and classifier (about 50 minutes on 2 CPU cores).
demo-assets: setup
	$(PY) -m skiptune.demo.make_assets --out src/skiptune/assets

test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q tests

bench: setup
	$(PY) benchmarks/skip_overhead.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
