# keybroker — make demo / make test work on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

# Find a Python >= 3.12 even where python3 is older (pyenv on these machines).
PYTHON_BOOT := $(shell for c in python3.13 python3.12 python3 \
	$$(command -v pyenv >/dev/null 2>&1 && ls -d $$(pyenv root)/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV) \
	$$(ls -d $$HOME/.pyenv/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do \
	  p=$$(command -v $$c 2>/dev/null) || continue; \
	  $$p -c 'import sys; sys.exit(0 if sys.version_info >= (3,12) else 1)' 2>/dev/null && { echo $$p; break; }; \
	done)

.PHONY: venv install demo test lint typecheck check bench clean

$(VENV)/.installed: pyproject.toml
	@if [ -z "$(PYTHON_BOOT)" ]; then echo "keybroker needs Python >= 3.12 (none found on PATH or under pyenv)" >&2; exit 1; fi
	@echo "using $(PYTHON_BOOT)"
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m tests.demo

test: $(VENV)/.installed
	$(PY) -m ruff check broker addons tests bench
	$(PY) -m mypy
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(PY) -m ruff check broker addons tests bench
	$(PY) -m ruff format --check broker addons tests bench

typecheck: $(VENV)/.installed
	$(PY) -m mypy

bench: $(VENV)/.installed
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
