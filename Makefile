# The two commands of the README. Both create the virtual environment on first use.
#   make demo   set up, then denoise the built-in synthetic demo
#   make test   set up, then run the linter, the unit tests and the SLURM tests (tests/slurm:
#               they start a single-node SLURM cluster; skipped without root and its Debian
#               packages, see tests/slurm/cluster.sh)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test setup

setup: $(VENV)/.installed

# pyproject.toml states ranges; constraints.txt pins every package to the versions the tests
# and benchmarks ran with (tests/test_packaging.py checks that each pin lies in its range).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,workflow,vendor,napari]'
	touch $@

demo: setup
	$(BIN)/snakemake --cores 2

test: setup
	$(BIN)/ruff check fm2s tests benchmarks tools
	$(BIN)/snakefmt --check Snakefile workflow/
	$(BIN)/python -m pytest -q -m "not slurm"
	$(BIN)/python -m pytest -q -m slurm -rs
