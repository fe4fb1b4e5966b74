# `make run`: the whole pipeline on the default params (dvc repro), then its verdict. `make test`: the test suite.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 5000

export OMP_WAIT_POLICY := PASSIVE
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export PREFECT_HOME := $(CURDIR)/.cache/prefect
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: venv run test sweep sweep-table mlflow-ui mlflow-sync plots-template bench clean-checkpoints

venv: $(STAMP)

# torch==2.13.0 (the CPU wheel on local disk) is in the same pip command as the rest (docs/design.md,
# "The machine and the libraries").
$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0 -e .
	$(BIN)/dvc config --local core.site_cache_dir $(CURDIR)/.cache/dvc-site
	touch $@

# The verdict (pipeline/verdict.py) is the last thing `make run` prints, even when DVC had nothing to re-run.
run: $(STAMP)
	dvc repro
	$(BIN)/python -m pipeline.verdict

test: $(STAMP)
	$(BIN)/python -m pytest -q

# A sweep as DVC experiments, one a cell, run one at a time, then its table and figure (pipeline/sweep.py):
#   make sweep GRID='--set world.stream.defect_rate=0,0.3,0.6 --set world.stream.wrong_relation=0,0.3' [SWEEP=name]
# `make sweep-table` rebuilds the table and figure alone (e.g. of a sweep still running: add --allow-missing to GRID).
SWEEP ?= sweep
SWEEP_OUT = data/sweeps/$(SWEEP)
sweep: $(STAMP)
	$(BIN)/python -m pipeline.sweep queue $(GRID) --name $(SWEEP) --run
	$(MAKE) --no-print-directory sweep-table

sweep-table: $(STAMP)
	$(BIN)/python -m pipeline.sweep table $(GRID) --name $(SWEEP) --table $(SWEEP_OUT).md --figure $(SWEEP_OUT).png --html $(SWEEP_OUT).html

mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host $(HOST) --port $(PORT) --workers 1

mlflow-sync: $(STAMP)
	$(BIN)/python -m pipeline.tracking sync

plots-template: $(STAMP)
	$(BIN)/python scripts/build_plots_template.py

bench: $(STAMP)
	$(BIN)/python bench/rl_iteration.py

clean-checkpoints:
	rm -rf checkpoints
