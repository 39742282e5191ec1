# Set-up that works on a fresh machine: a virtual environment, torch (the CPU build where there is no
# NVIDIA GPU, so that no CUDA packages are downloaded), then this package with its test extras.
PYTHON ?= python3.11
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
BIN := $(VENV)/bin
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: setup demo test

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)"; \
	else \
		$(BIN)/pip install --quiet --retries 1 "torch==$(TORCH_VERSION)" --extra-index-url $(TORCH_CPU_INDEX); \
	fi
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

# A tiny random-weight Mixtral on the sample slice of DecodingTrust in tests/fixtures/data: offline, ~1 minute.
demo: setup
	$(BIN)/moe-rbench tiny-model mixtral .demo/tiny-mixtral
	$(OFFLINE) MOE_RBENCH_DATA_DIR=tests/fixtures/data $(BIN)/lm_eval --model moe_hf \
		--model_args pretrained=.demo/tiny-mixtral --tasks moe_rbench_ood --batch_size 8 --output_path .demo/results

test: setup
	$(BIN)/pytest
