# Everything goes through .venv, created and filled by `make setup` (tools/setup_env.sh, idempotent).
PY := .venv/bin/python

.PHONY: setup test test-all lint demo study env clean-venv

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

# Pretrained backbones against random init over pretraining length (README, "Study"); on a GPU machine the same
# command trains on the GPU (the YAML says gpus: 1; tools/pipeline.sh ... --gpus N overrides it).
study: setup
	bash tools/pipeline.sh --config tools/study_pipeline.yaml

env: setup
	$(PY) -m adpe.tooling.env

clean-venv:
	rm -rf .venv
