# The README's commands. Everything runs in .venv inside the repository.
#   make demo     the main job on the embedded data: MNI152 brain MRI -> a Gumbel search of the ronasmis space ->
#                 the found network and the plain U-Net trained on the CPU -> Dice/NSD of both,
#                 demo_out/prediction.nii.gz, slices.png, summary.json (DEMO_ARGS: more knobs)
#   make test     install what is needed, build the extension, run the tests
#   make bench    the pytest-benchmark suites        make wheel   a wheel in dist/
#   make docs     the documentation site in build/docs (Sphinx, warnings are errors; the tutorials run
#                 while it builds); requirements/docs.txt is installed into the venv on first use
#   make docs-check   make docs, then the site opened in headless Chromium (Debian's chromium, installed
#                 with apt-get where missing): tests/test_docs_browser.py, screenshots build/docs-*.png
#   make fuzz     the op fuzz suite (tests/test_fuzz_ops.py, also part of `make test` with 12 examples per op
#                 and backend) run longer: FUZZ_EXAMPLES per op and backend (default 200, about 7,000 cases
#                 in all), FUZZ_SEED picks other cases (default 1; CI runs seed 0)
#   make asan     the C++ CPU kernels under AddressSanitizer: a debug build (-O1 -g -fsanitize=address,
#                 NAS3D_SANITIZE=address in setup.py) into build/asan, away from the normal extension, loaded
#                 through a copy of the package made of links (build/asan/pkg, first on PYTHONPATH, before the
#                 checkout for benchmarks/); then the
#                 op tests and the fuzz suite with gcc's libasan (and libstdc++) preloaded (detect_leaks=0, as
#                 Python itself leaks). Reports go to build/asan/report.<pid>; any report fails the target.
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

.PHONY: install build test bench wheel demo clean fuzz asan docs docs-check

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

FUZZ_EXAMPLES ?= 200
FUZZ_SEED     ?= 1
fuzz: install
	NAS3D_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) NAS3D_FUZZ_SEED=$(FUZZ_SEED) $(PY) -m pytest tests/test_fuzz_ops.py -q

ASAN_DIR   := build/asan
# libstdc++ preloaded too: else ASan's __cxa_throw interceptor finds no real one (Python does not link
# libstdc++) and the first C++ exception (in libtriton's import) aborts.
ASAN_LIB   ?= $(shell gcc -print-file-name=libasan.so) $(shell gcc -print-file-name=libstdc++.so)
ASAN_TESTS ?= tests/test_window.py tests/test_mixed_ops.py tests/test_axial.py tests/test_gumbel.py \
              tests/test_sliding_window.py tests/test_mixed_edge.py tests/test_fuzz_ops.py
ASAN_ENV   := LD_PRELOAD="$(ASAN_LIB)" ASAN_OPTIONS=detect_leaks=0:log_path=$(CURDIR)/$(ASAN_DIR)/report \
              PYTHONPATH=$(CURDIR)/$(ASAN_DIR)/pkg:$(CURDIR) NAS3D_FUZZ_TIMEOUT=600
asan: $(VENV)/.deps
	FORCE_CPU=1 NAS3D_SANITIZE=address $(PY) setup.py --quiet build_ext -b $(ASAN_DIR)/lib -t $(ASAN_DIR)/temp
	rm -rf $(ASAN_DIR)/pkg $(ASAN_DIR)/report.* && mkdir -p $(ASAN_DIR)/pkg/nas3d_fast
	for f in nas3d_fast/*; do case $$f in nas3d_fast/_C*.so) ;; *) ln -s $(CURDIR)/$$f $(ASAN_DIR)/pkg/$$f ;; esac; done
	ln -s $(CURDIR)/$(ASAN_DIR)/lib/nas3d_fast/_C*.so $(ASAN_DIR)/pkg/nas3d_fast/
	$(ASAN_ENV) $(PY) -P -c "import nas3d_fast._C as c; assert c.__file__.startswith('$(CURDIR)/$(ASAN_DIR)/'), c.__file__; print('asan build:', c.__file__)"
	$(ASAN_ENV) $(PY) -P -m pytest $(ASAN_TESTS) -q -p no:cacheprovider; status=$$?; \
	  reports=$$(ls $(ASAN_DIR)/report.* 2>/dev/null); \
	  if [ -n "$$reports" ]; then echo "AddressSanitizer reports:"; cat $$reports; exit 1; fi; \
	  echo "no AddressSanitizer report"; exit $$status

$(VENV)/.docs: $(VENV)/.deps requirements/docs.txt
	$(PIP) install --quiet -r requirements/docs.txt
	touch $@

docs: install $(VENV)/.docs
	$(PY) -m sphinx -W --keep-going -q -b html docs build/docs
	@echo "docs: build/docs/index.html"

CHROMIUM ?= /usr/bin/chromium
docs-check: docs
	@if [ ! -x $(CHROMIUM) ]; then \
	  echo "installing chromium (apt-get) for the browser check"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium; fi; \
	fi
	test -x $(CHROMIUM) || { echo "$(CHROMIUM) is missing: the browser check cannot run"; exit 1; }
	rm -f build/docs-*.png
	NAS3D_CHROMIUM=$(CHROMIUM) $(PY) -m pytest tests/test_docs_browser.py -q -rs
	test -s build/docs-index.png && test -s build/docs-tutorial.png

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
