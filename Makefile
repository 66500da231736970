# The two quick-start commands (README): `make chat` and `make test`. Both install into a virtual environment in this
# folder (.venv) first. PYTHON=/path/to/python uses that interpreter (your own virtual environment) instead.
ifdef PYTHON
PY := $(PYTHON)
else
PY := .venv/bin/python
endif
.PHONY: chat test test-gpu install install-test fixtures

chat: install
	$(PY) -m quantdeploy chat

test: install-test
	$(PY) -m quantdeploy.testing.fixtures
	$(PY) -m pytest

# On a machine with a CUDA GPU: the GPU tests and the decode check against the committed record for this GPU
# (docs/bench.md). Both skip, saying why, without a GPU. `make -o install-test test-gpu` skips the install.
test-gpu: install-test
	$(PY) -m quantdeploy.testing.fixtures
	$(PY) -m pytest -m gpu
	$(PY) benchmarks/gpu/decode_check.py

install:
	./install.sh

install-test:
	./install.sh --test

fixtures:
	$(PY) -m quantdeploy.testing.fixtures
