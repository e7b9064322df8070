# Two commands: `make demo` and `make test`. Both create .venv if missing and install the pinned stack.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.radfm-installed
export RADFM_HOME ?= $(CURDIR)/.radfm
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export RAY_AUTH_MODE := disabled
export TORCHINDUCTOR_CACHE_DIR := $(RADFM_HOME)/cache/torchinductor

.PHONY: demo test

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is pinned (a CPU build lies on these machines; an unpinned torch pulls a multi-GB CUDA build).
# hydra-optuna-sweeper 1.3.0 pins optuna<3, which breaks Optuna's SQLite storage under SQLAlchemy 2:
# resolve with optuna>=4 first, then add the sweeper without its dependencies.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0 -e '.[dev]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps hydra-optuna-sweeper==1.3.0
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/radfm demo

test: $(STAMP)
	$(PY) -m pytest
