# The two commands a newcomer needs: `make demo` and `make test`. Both set up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LINTED := node-core relay signaling tests playwright bench web/build_assets.py

.PHONY: setup web-assets test lint bench demo image container-test clean

setup: $(STAMP) web-assets

# Python packages, Debian's chromium (for the real-browser tests; never a downloaded browser) and
# the npm packages of the page (Pyodide, served from our own origin).
$(STAMP): pyproject.toml web/package.json web/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[native,dev]'
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: run 'sudo apt-get install chromium'"; exit 1; fi; fi
	cd web && npm ci --no-audit --no-fund --silent
	touch $(STAMP)

# What the page loads (the current core as a zip, the msgpack Pyodide wheel, the vector files).
web-assets: $(STAMP)
	$(PY) web/build_assets.py

# Tests run inside a private network namespace (tests/netns-run): WebRTC then finds only the
# namespace's veth pair and never sends a packet over the machine's real interfaces.
test: setup
	$(PY) -m ruff check $(LINTED)
	tests/netns-run $(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check $(LINTED)

# Benchmarks run in the private namespace too, as the tests do: several of them use WebRTC.
bench: setup
	tests/netns-run $(PY) bench/core.py
	tests/netns-run $(PY) bench/native.py
	tests/netns-run $(PY) bench/fec.py
	tests/netns-run $(PY) bench/browser.py
	tests/netns-run $(PY) bench/webrtc.py
	tests/netns-run $(PY) bench/wan.py

demo: setup
	$(VENV)/bin/zmesh demo

# The one container image of every role (deploy/Dockerfile; needs the page's assets, hence setup).
image: setup
	podman build -f deploy/Dockerfile -t localhost/zmesh:latest .

# Builds the image and runs deploy/compose.yaml end to end (installs podman with apt when missing).
container-test: setup
	deploy/container-test

clean:
	rm -rf $(VENV) build *.egg-info node-core/*.egg-info web/build web/node_modules
