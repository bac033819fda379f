# The two quickstart commands: `make demo` and `make test`. Each creates or reuses .venv.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-slow setup clean-venv

$(VENV)/.installed: pyproject.toml scripts/setup_env.sh
	bash scripts/setup_env.sh

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/sharewise demo --out runs/demo --overwrite

test: $(VENV)/.installed
	$(PY) -m pytest

test-slow: $(VENV)/.installed
	$(PY) -m pytest -m slow

clean-venv:
	rm -rf $(VENV)
