# The two quick-start commands (README): `make chat` and `make test`.
PYTHON ?= python3
.PHONY: chat test test-gpu install install-test fixtures

chat: install
	$(PYTHON) -m quantdeploy chat

test: install-test
	$(PYTHON) -m quantdeploy.testing.fixtures
	$(PYTHON) -m pytest

# On a machine with a CUDA GPU: the GPU tests and the decode check against the committed record for this GPU
# (docs/bench.md). Both skip, saying why, without a GPU. `make -o install-test test-gpu` skips the install.
test-gpu: install-test
	$(PYTHON) -m quantdeploy.testing.fixtures
	$(PYTHON) -m pytest -m gpu
	$(PYTHON) benchmarks/gpu/decode_check.py

install:
	./install.sh

install-test:
	./install.sh --test

fixtures:
	$(PYTHON) -m quantdeploy.testing.fixtures
