# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.graphopt-installed
TEST_STAMP := $(VENV)/.graphopt-test-installed

.PHONY: demo test test-fast install clean

# (Re)install when the packaging or the compiled kernels change; -e keeps the source tree live.
$(STAMP): pyproject.toml setup.py $(wildcard kernels/*.pyx kernels/*.h kernels/*.c)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[report]"
	touch $@

# Tests also need the torch extra (export, zoo); torch is pinned to the CPU build in pyproject.toml.
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,torch,report]"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/graphopt demo

# All tests, slow ones (real models) included.
test: $(TEST_STAMP)
	$(PY) -m pytest -q

# Everything but the tests marked slow.
test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -m "not slow"

# Regenerate the zoo's shipped files (models/digits_cnn.onnx, digits_test.npz, digits_calib.npz):
# trains digits-cnn on sklearn's digits with a fixed seed and fails below 0.97 test accuracy.
# `models` is also a folder, hence .PHONY.
.PHONY: models
models: $(TEST_STAMP)
	$(PY) -m graphopt.models.build

clean:
	rm -rf $(VENV) build *.egg-info kernels/*.so out
