# The two commands of the README: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3

.PHONY: setup demo test lint

setup:
	bash scripts/setup.sh

demo: setup
	gpuledger demo

test: setup
	bash scripts/test.sh

lint:
	ruff check . && ruff format --check .
