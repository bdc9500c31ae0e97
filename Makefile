# Two entry points: `make demo` and `make test`. Both build .venv from scratch if missing.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv lint bench clean

# Find a Python >= 3.12: on the PATH first, then among pyenv's installed versions.
PYTHON_BIN := $(shell for c in python3.13 python3.12 python3; do \
    p=$$(command -v $$c 2>/dev/null) && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { echo $$p; exit 0; }; \
  done; \
  root=$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv); \
  for p in $$(ls -d $$root/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do \
    $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { echo $$p; exit 0; }; \
  done)

$(STAMP): pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if [ -z "$(PYTHON_BIN)" ]; then \
	    echo "error: numpyro_jarzynski needs Python >= 3.12 (JAX 0.12, ArviZ 1.x). None found on the PATH or under pyenv's versions; install one (e.g. 'pyenv install 3.12') and re-run." >&2; exit 1; \
	  fi; \
	  echo "Creating $(VENV) with $(PYTHON_BIN)"; \
	  $(PYTHON_BIN) -m venv $(VENV); \
	fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	MPLBACKEND=Agg $(PY) examples/quickstart.py

test: $(STAMP)
	MPLBACKEND=Agg $(PY) -m pytest -q -n 2 tests

lint: $(STAMP)
	$(VENV)/bin/ruff check numpyro_jarzynski tests examples benchmarks

bench: $(STAMP)
	$(PY) benchmarks/smc_vs_blackjax.py

clean:
	rm -rf $(VENV) .jax_cache
