# darb: `make run` starts the service, `make test` runs the suite. Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')
GEN_STAMP := darb/.generated

.PHONY: venv proto lint test run demo bench lock clean screenshots

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

proto: $(GEN_STAMP)

$(GEN_STAMP): $(STAMP) $(PROTOS)
	rm -rf darb/v1 darb/executor
	$(PY) -m grpc_tools.protoc -Iprotos \
		--python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	find darb/v1 darb/executor -type d -exec touch {}/__init__.py \; 2>/dev/null || true
	touch $@

node_modules/.bin/buf: package.json
	npm install --no-audit --no-fund --silent
	touch $@

lint: proto node_modules/.bin/buf
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	node_modules/.bin/buf lint

test: proto
	$(PY) -m pytest -q

# Regenerates requirements.lock from pyproject.toml (needs the network to PyPI).
lock: $(STAMP)
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra cli --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) darb/v1 darb/executor $(GEN_STAMP) node_modules

# Starts the control plane, the agent and the web UI (http://127.0.0.1:8080) in the
# foreground (the embedded PostgreSQL and files in ./data).
run: proto
	$(PY) scripts/run.py

# Against a running `make run`: builds a demo channel and walks through the CLI flow.
demo: proto
	$(PY) scripts/demo.py

# Prints the benchmark table and writes it to docs/benchmarks.md. h2load (Debian's
# nghttp2-client) generates the GetEnvironment load; without it a Python client does.
bench: proto
	command -v h2load >/dev/null || apt-get install -y -q nghttp2-client \
		|| echo "h2load could not be installed: GetEnvironment uses the Python client"
	$(PY) -m benchmarks

# Screenshots of the web UI's main pages (desktop and 390 px wide) into docs/ui/, taken by
# the headless Chromium the web tests use, against a throwaway stack of its own.
screenshots: proto
	$(PY) scripts/screenshots.py docs/ui
