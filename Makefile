# The README's commands. Every target sets up what it needs from scratch.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup data train evaluate test bench lint clean

setup: $(STAMP)

# Re-install only when the package's metadata changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

data: setup
	$(BIN)/mnist data

train: data
	$(BIN)/python train_mnist.py

evaluate: setup
	$(BIN)/python test_mnist.py

test: data
	$(BIN)/python -m pytest

bench: data
	$(BIN)/python benchmarks/train_speed.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
