# The two quickstart commands: `make demo` and `make test`. Each creates or reuses .venv.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-slow reproduce tables setup clean-venv

$(VENV)/.installed: pyproject.toml scripts/setup_env.sh
	bash scripts/setup_env.sh

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/sharewise demo --out runs/demo --overwrite

test: $(VENV)/.installed
	$(PY) -m pytest

test-slow: $(VENV)/.installed
	$(PY) -m pytest -m slow

# Rerun the cheap deterministic benchmarks and compare with their stored records (docs/benchmarks.md);
# not part of `make test` (about a minute of training). REPRODUCE_ARGS=--all adds Adult seeds 1-2.
reproduce: $(VENV)/.installed
	$(PY) benchmarks/reproduce.py $(REPRODUCE_ARGS)

# Re-render docs/benchmarks.md's generated tables from benchmarks/results/runs/.
tables: $(VENV)/.installed
	$(PY) benchmarks/tables.py

clean-venv:
	rm -rf $(VENV)
