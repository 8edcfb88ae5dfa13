# The README's commands. Everything runs in .venv inside the repository.
#   make demo     the main job on the embedded data: MNI152 brain MRI -> a ronasmis U-Net trained on the CPU ->
#                 Dice/NSD, demo_out/prediction.nii.gz, slices.png, summary.json (DEMO_ARGS: more knobs)
#   make test     install what is needed, build the extension, run the tests
#   make bench    the pytest-benchmark suites        make wheel   a wheel in dist/
# Build knobs (environment): FORCE_CPU=1 skips the CUDA kernels, FORCE_CUDA=1 requires them,
# TORCH_CUDA_ARCH_LIST="7.5;8.0;9.0" picks GPU architectures, MAX_JOBS=N parallel compile jobs.

PYTHON_BOOT ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
TORCH       ?= torch==2.14.1
CUDA_HOME   ?= $(shell d=$$(dirname $$(dirname $$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc))); [ -d $$d/lib64 ] && echo $$d || echo /usr/local/cuda)
export CUDA_HOME
export MAX_JOBS ?= 2

SOURCES := $(shell find csrc python -name '*.cpp' -o -name '*.cu' -o -name '*.h' 2>/dev/null)

.PHONY: install build test bench wheel demo clean

$(VENV)/.deps: requirements/dev.txt
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)" -r requirements/dev.txt
	touch $@

# Metadata and the `nas3d` console script; the extension itself is (re)built by `build`.
$(VENV)/.editable: $(VENV)/.deps pyproject.toml setup.py
	NAS3D_METADATA_ONLY=1 $(PIP) install --quiet --no-build-isolation --no-deps -e .
	touch $@

install: $(VENV)/.editable build

# Incremental (ninja): only changed sources recompile.
build: $(VENV)/.deps
	$(PY) setup.py --quiet build_ext --inplace

test: install
	$(PY) -m pytest tests -q

bench: install
	$(PY) -m pytest benchmarks -q --benchmark-columns=median,iqr,rounds --benchmark-sort=name

wheel: $(VENV)/.deps
	rm -rf dist
	$(PY) -m build --wheel --no-isolation --outdir dist .

DEMO_ARGS ?=
demo: install
	$(VENV)/bin/nas3d info
	$(PY) -m nas3d_fast.demo --out demo_out $(DEMO_ARGS)

clean:
	rm -rf build dist *.egg-info nas3d_fast/_C*.so benchmarks/results .pytest_cache demo_out
