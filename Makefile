# One entry point for setup, demo, tests and benchmarks.
#   make demo   build the venv (pinned set) and run the demo
#   make test   build the venv and run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU torch wheel lives in a local folder on this team's machines; elsewhere
# the registry's torch==2.13.0 is used.
FIND_LINKS := $(if $(and $(PIP_FIND_LINKS),$(wildcard $(PIP_FIND_LINKS))),--find-links $(PIP_FIND_LINKS),)
export HF_HUB_OFFLINE ?= 1
export NO_ALBUMENTATIONS_UPDATE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test bench clean wordnet

# WordNet 3.0 (Debian's wordnet-base) backs mine's semantic mention test. It is
# installed when missing and apt-get can run; without it mine falls back to the
# string mention test and says so (tests that need it skip with a reason).
WORDNET_DIR ?= /usr/share/wordnet
wordnet:
	@test -f $(WORDNET_DIR)/index.noun || ! command -v apt-get >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] \
	  || (apt-get install -y -q --no-install-recommends wordnet-base >/dev/null 2>&1 \
	      || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends wordnet-base >/dev/null 2>&1)) \
	  || echo "wordnet-base could not be installed: mine's mention test falls back to string matching"

# --compile-bytecode: every process (each stage, each Beam worker) then imports from .pyc, also where
# PYTHONDONTWRITEBYTECODE is set (here: torch + Beam + faiss import in 3.0 s instead of 6.1 s).
$(VENV)/.installed: requirements.lock setup.py
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install -q uv
	uv venv -q --allow-existing --python $(PYTHON) $(VENV)
	uv pip install -q --compile-bytecode --python $(PY) $(FIND_LINKS) -r requirements.lock
	uv pip install -q --python $(PY) --no-deps -e .
	touch $@

venv: $(VENV)/.installed wordnet

demo: venv
	$(VENV)/bin/dupmine demo --output demo_out

test: venv
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: venv
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) demo_out bench_out
