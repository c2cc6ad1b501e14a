# Set-up and the two main commands. `make demo` and `make test` create the
# virtual environment in .venv and install pinned versions from
# constraints.txt on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := constraints.txt
DEMO_CONFIG ?= configs/pmc_oa_shared_feature.py:small
DEMO_WORKDIR ?= runs/demo
DEMO_EXPORT ?= exports/demo
PYTEST_ARGS ?=

.PHONY: demo demo-pmc-oa test install lock clean openclip-env

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml $(CONSTRAINTS)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Builds the embedded dataset (first run only), trains the small shared
# config, evaluates on test and exports a bundle. Rerunning resumes the run.
demo: $(VENV)/.installed
	$(BIN)/shared-encoder-train --config=$(DEMO_CONFIG) --workdir=$(DEMO_WORKDIR)
	$(BIN)/shared-encoder-export --workdir=$(DEMO_WORKDIR) --output=$(DEMO_EXPORT) --overwrite

# Writes the embedded dataset as a folder in PMC-OA's release layout (once)
# and trains the small shared config on it through the pmc_oa builder.
PMC_OA_FOLDER ?= data/pmc_oa_synthetic
demo-pmc-oa: $(VENV)/.installed
	test -f $(PMC_OA_FOLDER)/test.jsonl || $(BIN)/python -m shared_encoder_jax.data.pmc_oa_folder --output $(PMC_OA_FOLDER)
	$(BIN)/shared-encoder-train --config=$(DEMO_CONFIG) --config.data.name=pmc_oa --config.data.manual_dir=$(PMC_OA_FOLDER) --workdir=runs/demo_pmc_oa

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Rewrites constraints.txt with the versions installed in .venv now.
lock: $(VENV)/.installed-test
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^shared-encoder-jax' > $(CONSTRAINTS)

# OpenCLIP and PyTorch for benchmarks/openclip_anchor.py, in their own
# environment: never in .venv, never in CI. This torch and torchvision pair
# imports together on x86_64 Linux; benchmarks/openclip-constraints.txt pins
# the rest. The torch wheel includes CUDA libraries (about 5.6 GB in all).
OPENCLIP_VENV ?= .venv-openclip
openclip-env: $(OPENCLIP_VENV)/.installed

$(OPENCLIP_VENV)/.installed: benchmarks/openclip-constraints.txt
	$(PYTHON) -m venv $(OPENCLIP_VENV)
	$(OPENCLIP_VENV)/bin/python -m pip install --quiet -c benchmarks/openclip-constraints.txt torch==2.14.1 torchvision==0.29.1 open_clip_torch==3.3.0
	touch $@

clean:
	rm -rf $(VENV) $(OPENCLIP_VENV) *.egg-info .pytest_cache
