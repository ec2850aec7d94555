# pear_exp: `make help` lists the targets.
PY ?= .venv/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: help install run smoke test test-slow clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

install: ## create .venv and install pear_exp with its test tools (CPU torch 2.13.0)
	python3 -m venv .venv
	$(PY) -m pip install -e ".[dev]"

run: ## the embedded default: tiny teacher and student, behavior -> SFT -> evaluate on the CPU
	$(PY) -m pear_exp

smoke: ## every stage in seconds, learning little
	$(PY) -m pear_exp +experiment=smoke logger=none

test: ## the fast, offline, CPU-only test suite (what CI runs)
	$(PY) -m pytest -q

test-slow: ## the end-to-end tests that take minutes
	$(PY) -m pytest -q -m slow

clean: ## remove run outputs (not the tiny-model cache in ~/.cache/pear_exp)
	rm -rf outputs multirun
