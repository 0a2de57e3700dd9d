# Two set-up commands: `make demo` and `make test`. Both build .venv from scratch when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0

.PHONY: demo test lint bench mutants install docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev,parquet,benchmarks,aggregators,logging,docs]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/polytask demo

lint: install
	$(PY) -m ruff check polytask tests benchmarks examples scripts

test: install lint
	$(PY) -m pytest -q

# The docs site (mkdocs.yml) into site/, warnings as errors; the CLI, config and API references
# are generated from the code at build time (scripts/docs_gen.py).
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# Quick versions (a few minutes); the full runs are documented in docs/benchmarks.md.
bench: install
	$(PY) benchmarks/step_cost.py --quick --out benchmarks/results/quick/step_cost.json
	$(PY) benchmarks/balancer_cost.py --quick --out benchmarks/results/quick/balancer_cost.json
	$(PY) benchmarks/quality.py --quick --out benchmarks/results/quick/quality.json
	$(PY) benchmarks/stl_ensemble.py --quick --out benchmarks/results/quick/stl_ensemble.json
	$(PY) benchmarks/many_tasks.py --quick --out benchmarks/results/quick/many_tasks.json
	$(PY) benchmarks/side_by_side.py --quick --out benchmarks/results/quick/side_by_side.json
	$(PY) benchmarks/compare_cost.py --quick --out benchmarks/results/quick/compare_cost.json

# Each balancer / train setting / loss detail swapped for a stand-in: some test must fail (~1 min).
mutants: install
	$(PY) tests/mutants.py --out benchmarks/results/quick/mutants.json

clean:
	rm -rf $(VENV) build *.egg-info
