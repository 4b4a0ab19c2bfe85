# The README's commands. Every target sets up what it needs from scratch.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup data train evaluate test bench bench-serve chromium fashion-mnist-package lint clean

setup: $(STAMP)

# Re-install only when the package's metadata changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# MNIST, then Fashion-MNIST; on Debian, Fashion-MNIST's package is installed first (the code
# itself never installs system packages).
data: setup fashion-mnist-package
	$(BIN)/mnist data
	$(BIN)/mnist data --dataset fashion-mnist

train: data
	$(BIN)/python train_mnist.py

evaluate: setup
	$(BIN)/python test_mnist.py

# Two passes: everything else on both cores, then the tests that race the clock on their own,
# where another test's load cannot make them miss a deadline. Each test module runs on one
# worker (loadscope), so a model its tests share is trained once, not once per worker; modules
# start in collection order, which tests/conftest.py makes slow-first (no reorder).
test: data chromium
	$(BIN)/python -m pytest -n 2 --dist loadscope --no-loadscope-reorder -m "not serial"
	$(BIN)/python -m pytest -m serial

# The drawing page's browser test drives Debian's Chromium (Playwright's own browser download
# is not used). CI runs as root; elsewhere sudo asks.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
chromium:
	test -x /usr/bin/chromium || ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium)

# Debian's dataset-fashion-mnist: the four .gz files under /usr/share/datasets/fashion-mnist/.
# Elsewhere (no apt-get) this does nothing, and `mnist data` tries its other routes.
fashion-mnist-package:
	test -d /usr/share/datasets/fashion-mnist || ! command -v apt-get >/dev/null || \
	  ($(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist)

# The CPU kind, then the engine and the fast preset against the conventional pipeline, each
# beside its compute floor (README, Performance); where torch also sees a CUDA GPU, the fast
# preset there with and without a CUDA graph, beside its floor.
bench: data
	$(BIN)/python benchmarks/train_speed.py
	@if $(BIN)/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		$(BIN)/python benchmarks/gpu_speed.py; fi

# 2,000 predictions from 16 clients against `mnist serve` on loopback; stops by itself.
bench-serve: data
	$(BIN)/python benchmarks/serve_load.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
