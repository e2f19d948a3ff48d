# crm-analytics: `make run` builds everything and runs the pipeline; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PARAMS ?= params/default.yaml
CUSTOMERS ?= 20000
BENCH_SIZES ?= 20000 200000 1000000
STAGE ?= churn
PROFILE_SIZE ?= 200000
DATA_DIR := data/raw/default
INSTALLED := $(VENV)/.installed
RUN_STAMP := reports/.up-to-date-$(notdir $(basename $(PARAMS)))
LIB_FILES := $(shell find lib -name '*.py') pyproject.toml
DATA_DEP := $(if $(filter params/default.yaml,$(PARAMS)),$(DATA_DIR)/_SUCCESS)

# the secret salt of pseudonymous ids: the environment's, or .secrets/pseudonym-salt
ifeq ($(strip $(CRM_PSEUDONYM_SALT)),)
export CRM_PSEUDONYM_SALT := $(shell bash scripts/ensure-salt.sh)
endif

.PHONY: help install data run test lint format lab bench profile docs clean-reports

help:
	@echo "make run    install, generate the default data and run the whole pipeline (HTML in reports/)"
	@echo "make test   install and run lint, format check and the test suite"
	@echo "make lab    open JupyterLab on the notebooks with the project kernel"
	@echo "make bench  per-stage time, memory and rows/s at 20k, 200k and 1M customers (BENCH_SIZES=...)"
	@echo "make profile STAGE=churn PROFILE_SIZE=200000  flame graph of one stage on benchmark data (after make bench)"

$(INSTALLED): requirements.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: python3.11 not found" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name crm-analytics --display-name "crm-analytics (.venv)"
	@touch $@

install: $(INSTALLED)

$(DATA_DIR)/_SUCCESS: lib/crm_analytics/generate.py | $(INSTALLED)
	$(BIN)/crm-analytics generate --customers $(CUSTOMERS) --seed 42 --out $(DATA_DIR)

data: $(DATA_DIR)/_SUCCESS

$(RUN_STAMP): $(INSTALLED) $(DATA_DEP) $(wildcard notebooks/*.ipynb) $(LIB_FILES) $(PARAMS)
	@bash scripts/ensure-fonts.sh
	$(BIN)/crm-analytics run --params $(PARAMS)
	@touch $@

run: $(RUN_STAMP)
	@echo "report index: $(abspath reports/latest/index.html)"

lint: $(INSTALLED)
	$(BIN)/ruff check lib tests bench
	$(BIN)/ruff format --check lib tests bench

format: $(INSTALLED)
	$(BIN)/ruff format lib tests bench
	$(BIN)/ruff check --fix lib tests bench

test: lint
	bash scripts/ensure-postgres.sh
	bash scripts/ensure-chromium.sh
	bash scripts/ensure-fonts.sh
	MPLBACKEND=Agg $(BIN)/python -m pytest

lab: $(INSTALLED)
	$(BIN)/jupyter lab --notebook-dir=notebooks

bench: $(INSTALLED)
	$(BIN)/python bench/run.py --customers $(BENCH_SIZES)

profile: $(INSTALLED)
	@test -f data/bench/params-$(PROFILE_SIZE).yaml || { echo "no benchmark data of $(PROFILE_SIZE) customers: run make bench BENCH_SIZES=$(PROFILE_SIZE) first" >&2; exit 2; }
	$(BIN)/py-spy record --subprocesses --rate 20 -o data/bench/profile-$(STAGE)-$(PROFILE_SIZE).svg -- \
	  $(BIN)/crm-analytics run --params data/bench/params-$(PROFILE_SIZE).yaml --only $(STAGE) \
	  --reports-dir data/bench/reports --run-id profile-$(STAGE)-$(PROFILE_SIZE)
	@echo "flame graph: $(abspath data/bench/profile-$(STAGE)-$(PROFILE_SIZE).svg)"

docs: $(INSTALLED)
	$(BIN)/crm-analytics docs

clean-reports:
	rm -rf reports/[0-9]* reports/latest reports/.up-to-date-*
