# anoplug — the README's two commands are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Torch pins for set-up (pyproject only declares ranges). 2.14.1 + 0.29.1 install from the
# machine's local wheels; the CPU-only 2.13.0 build cannot import torchvision.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PLUGINS := $(sort $(wildcard plugins/anoplug-*))
STAMP := $(VENV)/.anoplug-installed
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export MPLBACKEND := Agg
# Test processes (pytest-xdist; each holds its own models, ~2.5 GB at most). 2 = CI's cores; the
# work-stealing scheduler keeps both busy to the end instead of leaving one worker a long queue.
PYTEST_WORKERS ?= 2

.PHONY: setup demo test lint lab bench clean

$(PY):
	python3 -m venv $(VENV)

# Re-install when the host's or any plugin's pyproject changes.
$(STAMP): $(PY) pyproject.toml $(wildcard plugins/*/pyproject.toml) Makefile
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[dev,widgets,diffusion,backbones,dask]' $(foreach p,$(PLUGINS),-e ./$(p)) $(TORCH_PINS)
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(PY) tools/setup_assets.py
	bash tools/install_browser.sh
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/anoplug demo --out out/demo

test: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal
	ANOPLUG_SMOKE=1 $(PY) -m pytest -q --nbval-lax --nbval-current-env --nbval-cell-timeout=120 \
		--nbval-sanitize-with notebooks/nbval_sanitize.cfg notebooks/

lint: setup
	$(VENV)/bin/ruff check .

lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks

bench: setup
	$(PY) benchmarks/run_all.py

# docs/plugins.md from the installed plugins (measures generators missing from tools/plugin_timings.json)
.PHONY: plugins-doc
plugins-doc: setup
	$(PY) tools/plugin_directory.py --measure

clean:
	rm -rf out .pytest_cache
