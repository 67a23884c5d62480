# Everything goes through .venv, created and filled by `make setup` (tools/setup_env.sh, idempotent).
#   make setup [TORCH=system] [WHEELHOUSE=DIR] [PYTHON=python3.12]   see tools/setup_env.sh and the README
#   make wheelhouse WHEELHOUSE=DIR [PYTHON_VERSION=3.12] [PLATFORM=manylinux_2_28_x86_64] [WITH_TORCH=1] [SPLIT_MIB=60]
#   make test-torch TORCH_VERSION=2.11   the CPU test suite on another torch, in .venv-torch2.11
PY := .venv/bin/python

.PHONY: setup wheelhouse test test-all test-torch lint demo study env gpu-check clean-venv

setup:
	@bash tools/setup_env.sh

wheelhouse:
	@bash tools/wheelhouse.sh

test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m "slow or not slow"

test-torch:
	@bash tools/test_torch.sh $(TORCH_VERSION) $(PYTEST_ARGS)

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

gpu-check:
	bash tools/gpu_check.sh $(GPU_CHECK_ARGS)

clean-venv:
	rm -rf .venv
