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

.PHONY: install test demo gpu-check gpu-namespace clean

install: $(STAMP)

# torch first and pinned: 2.13.0 is the CPU build on this machine's disk; GPU users override
# TORCH_SPEC. Everything else comes from pyproject.toml.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The CPU kernels are compiled once into their on-disk cache before the suite, so the two test workers
# (pytest-xdist, one per core; a test file stays on one worker, so its fixtures are built once) and
# every process the tests start load them instead of each compiling them again: the parallel kernels
# and the one-thread twin DALI's in-graph kernel calls, in one process (they share the compiled view).
TEST_WORKERS ?= 2

test: install
	$(PY) -c "from remixmatch import kernels; print(f'CPU kernels ready in {kernels.compile_all():.0f} s')"
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The demo's run directories are its own: a new demo replaces them. ReMixMatch and the supervised
# baseline train on the same 250 labels (same --seed), the gain is the difference of their figures.
DEMO_RUN ?= runs/demo
DEMO_BASELINE ?= runs/demo-supervised
DEMO_STEPS ?= 1000

demo: install
	$(VENV)/bin/prep-cifar10 --out $(SHARDS) --overwrite $(if $(CIFAR10_SOURCE),--source $(CIFAR10_SOURCE))
	$(VENV)/bin/rmm-shards info $(SHARDS)
	rm -rf $(DEMO_RUN) $(DEMO_BASELINE)
	$(VENV)/bin/rmm-train --data $(SHARDS) --labels 250 --preset cpu --steps $(DEMO_STEPS) --out $(DEMO_RUN)
	$(VENV)/bin/rmm-train --data $(SHARDS) --labels 250 --preset cpu --steps $(DEMO_STEPS) --algorithm supervised --quiet --out $(DEMO_BASELINE)
	$(PY) -c "import json; r, s = (json.load(open(f'{d}/summary.json')) for d in ('$(DEMO_RUN)', '$(DEMO_BASELINE)')); \
	a, b = (100 * x['accuracy']['ema_median_last'] for x in (r, s)); \
	print(f\"{r['steps']} steps, 250 labels, {r['model']['name']}: ReMixMatch {a:.2f}% | supervised (same labels) {b:.2f}% | gain {a - b:+.2f} points ({r['wall_seconds']:.0f} s and {s['wall_seconds']:.0f} s)\")"
	$(VENV)/bin/rmm-bench views --shards $(SHARDS) --out bench-out/demo/views.png
	$(VENV)/bin/rmm-bench all --quick --skip ptx --shards $(SHARDS) --out bench-out/demo/report > /dev/null
	@echo "quick report (without the PTX compile for GPUs: rmm-bench all --quick alone): bench-out/demo/report/report.md and report.json; charts: $$(cd bench-out/demo/report && ls *.png | tr '\n' ' ')"

# On a machine with a GPU: `rmm-bench gpu-check`, every CUDA path and the GPU figures in one run bounded
# by GPU_BUDGET seconds (sections: data, environment with the kernels' compile warm-up, augmentation,
# training, a short real run, pipeline, the gpu-marked tests, the launcher, then torch.compile, bn-mode
# and kernel tuning as the budget allows). By default it installs like the other targets (set
# TORCH_SPEC to a CUDA build). Where nothing can be fetched and python already has torch with CUDA,
# numba, numba-cuda, pyarrow, pillow and rich: `make gpu-check GPU_PYTHON=python3` runs the checkout as
# is. The archive: .device/cifar10-jpg.tar.gz when carried there, else CIFAR10_SOURCE (carry the
# archive alone: the shards and the Numba cache go to GPU_WORK, outside the checkout). GPU_BUNDLE gets
# the few files a lent machine sends back (report.json, report.md, charts, logs). GPU_ARGS is passed
# on as is: a prepared follow-up (e.g. GPU_ARGS='--skip data --skip environment') can go at once.
# GPU_REHEARSE=1: the rehearsal on a machine without a GPU, every section's own command in its CPU
# form at tiny sizes (the tests collect and skip); it fails if a section does.
GPU_PYTHON ?=
GPU_OUT ?= bench-out/gpu
GPU_BUNDLE ?= $(GPU_OUT)/bundle
GPU_BUDGET ?= $(if $(GPU_REHEARSE),1200,480)
GPU_ARCHIVE ?= $(firstword $(wildcard .device/cifar10-jpg.tar.gz) $(CIFAR10_SOURCE))
GPU_WORK ?= /tmp/rmm-gpu-check
GPU_SHARDS ?= $(GPU_WORK)/c10
GPU_REHEARSE ?=
GPU_LEARN_SECONDS ?= $(if $(GPU_REHEARSE),10,100)
GPU_ARGS ?=
GPU_NS := .device/ns
# numba-cuda finds NVVM through cuda-pathfinder or CUDA_HOME: named for every process, this one too.
GPU_CUDA_HOME ?= $(or $(CUDA_HOME),$(wildcard /usr/local/cuda))
GPU_ENV := $(if $(GPU_CUDA_HOME),CUDA_HOME=$(GPU_CUDA_HOME))
ifeq ($(GPU_PYTHON),)
GPU_RUN := $(GPU_ENV) $(PY)
GPU_SETUP := install
else
# The namespace goes before whatever PYTHONPATH the machine has, not instead of it.
GPU_RUN := $(GPU_ENV) PYTHONPATH=$(GPU_NS)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON)
GPU_SETUP := gpu-namespace
endif

gpu-check: $(GPU_SETUP)
	@test -n "$(GPU_ARCHIVE)" || { echo "gpu-check: no CIFAR-10 archive: put it in .device/ or set CIFAR10_SOURCE" >&2; exit 2; }
	$(GPU_RUN) -m remixmatch.bench.cli gpu-check --archive $(GPU_ARCHIVE) --shards $(GPU_SHARDS) \
		--numba-cache $(GPU_WORK)/numba-cache --budget $(GPU_BUDGET) --learn-seconds $(GPU_LEARN_SECONDS) \
		--out $(GPU_OUT) --bundle $(GPU_BUNDLE) $(if $(GPU_REHEARSE),--rehearse) $(GPU_ARGS) > /dev/null
	@echo "GPU report: $(GPU_OUT)/report.md and report.json; sent-back files in $(GPU_BUNDLE)"

# The package namespace as symlinks to the checkout: `import remixmatch.kernels` without an install.
# Each link is read from pyproject.toml's package-dir, so a new package is linked too.
gpu-namespace:
	$(GPU_PYTHON) -c "import os, re; ns = '$(GPU_NS)/remixmatch'; os.makedirs(ns, exist_ok=True); \
	[(os.path.lexists(f'{ns}/{name}') and os.remove(f'{ns}/{name}'), os.symlink(os.path.abspath(folder), f'{ns}/{name}')) \
	 for name, folder in re.findall(r'\"remixmatch\.(\w+)\" = \"(\w+)\"', open('pyproject.toml').read())]"

clean:
	rm -rf $(VENV) build *.egg-info bench-out
