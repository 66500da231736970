# The two quick-start commands (README): `make chat` and `make test`.
PYTHON ?= python3
.PHONY: chat test install install-test fixtures

chat: install
	$(PYTHON) -m quantdeploy chat

test: install-test
	$(PYTHON) -m quantdeploy.testing.fixtures
	$(PYTHON) -m pytest

install:
	./install.sh

install-test:
	./install.sh --test

fixtures:
	$(PYTHON) -m quantdeploy.testing.fixtures
