# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test processes (pytest-xdist); 0 runs the suite in one process.
TEST_WORKERS ?= 2
# Where pip looks for torch. Empty: pip's own configuration, which must offer the CPU wheel (a
# wheel directory or mirror); PyPI's Linux wheel is the multi-GB CUDA build. Elsewhere:
# `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu` (PyTorch's CPU-only index).
TORCH_INDEX ?=

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first, so that the project's install finds torch satisfied and
	# pulls no CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gorl-bench demo

test: $(STAMP)
	MUJOCO_GL=disable $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/gorl-bench bench envs

clean:
	rm -rf $(VENV) runs .pytest_cache
