# Everything goes through .venv, created and filled by `make setup` (tools/setup_env.sh, idempotent).
PY := .venv/bin/python

.PHONY: setup test test-all lint demo env clean-venv

setup:
	@bash tools/setup_env.sh

test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m "slow or not slow"

lint: setup
	.venv/bin/ruff check .

demo: setup
	bash tools/pipeline.sh --config tools/demo_pipeline.yaml

env: setup
	$(PY) -m adpe.tooling.env

clean-venv:
	rm -rf .venv
