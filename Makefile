# The two set-up commands of README.md: `make demo` (the main job) and `make test`.
# Each creates or reuses the local venv and installs everything on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.spikec-installed

.PHONY: demo test test-slow venv clean

venv: $(STAMP)

# torch and torchvision first, pinned: these wheels lie on the build machines' disk
# (an unpinned torch downloads several GB), and transformers 5.x needs torchvision
# to build the Qwen2-VL and InternVL processors.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	SPIKEC_SLOW=1 $(PY) -m pytest

clean:
	rm -rf out build dist *.egg-info .pytest_cache
