# Two commands matter: `make demo` (the main job) and `make test` (the test suite). Both install first.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# The official archive is downloaded unless a local source is given; the shared real-data archive
# beside a checkout is used when present (machines here have no internet).
CIFAR10_SOURCE ?= $(wildcard ../shared/data/cifar10-jpg.tar.gz)
SHARDS ?= shards
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo clean

install: $(STAMP)

# torch first and pinned: 2.13.0 is the CPU build on this machine's disk; GPU users override
# TORCH_SPEC. Everything else comes from pyproject.toml.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

test: install
	$(PY) -m pytest -q

# The demo's run directory is its own: a new demo replaces it.
DEMO_RUN ?= runs/demo

demo: install
	$(VENV)/bin/prep-cifar10 --out $(SHARDS) --overwrite $(if $(CIFAR10_SOURCE),--source $(CIFAR10_SOURCE))
	$(VENV)/bin/rmm-shards info $(SHARDS)
	rm -rf $(DEMO_RUN)
	$(VENV)/bin/rmm-train --data $(SHARDS) --labels 250 --preset cpu --steps 1000 --out $(DEMO_RUN)
	$(PY) -c "import json; s = json.load(open('$(DEMO_RUN)/summary.json')); print(json.dumps({k: s[k] for k in ('algorithm', 'steps', 'accuracy', 'model', 'wall_seconds')}, indent=1))"
	$(VENV)/bin/rmm-bench views --shards $(SHARDS) --out bench-out/demo/views.png
	$(VENV)/bin/rmm-bench aug --quick --out bench-out/demo

clean:
	rm -rf $(VENV) build *.egg-info bench-out
