# Fresh machine: `make run` sets up .venv and starts the instrument; `make test` runs the tests.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pip's output through scripts/pip_quiet.py: a correct install's expected torchaudio
# "dependency conflict" ERROR and setuptools' warning box are dropped, real errors kept;
# pipefail keeps pip's own exit status.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
QUIET := 2>&1 | $(PY) scripts/pip_quiet.py

.PHONY: setup run test lint system-deps clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "needs Python 3.11 ($(PY))"; exit 1; }
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip $(QUIET)
	# torch first, pinned: the CPU wheel here, the CUDA build on a GPU machine.
	$(BIN)/pip install -q torch==2.13.0 $(QUIET)
	# encodec declares torchaudio, whose PyPI build breaks beside CPU torch; the EnCodec model
	# never uses it, so install encodec alone and give it a stub (model/torchaudio_stub.py).
	$(BIN)/pip install -q --no-deps encodec==0.1.1 $(QUIET)
	# pesto-pitch (the eval's pitch tracker; weights inside the wheel) declares torchaudio too
	# and only uses it to read files: same stub (pgesam_live/model/torchaudio_stub.py).
	$(BIN)/pip install -q --no-deps pesto-pitch==2.0.1 $(QUIET)
	$(BIN)/pip install -q -e '.[dev]' $(QUIET)
	touch $(STAMP)

setup: $(STAMP)

# Debian packages: libfluidsynth for the soundfont data set, General MIDI soundfonts, tmux for
# the terminal tests, chromium for the web page's tests (driven by Playwright's Python API;
# Playwright's own browser download is never used). Needs root (apt-get); CI runs it.
system-deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfluidsynth3 fluid-soundfont-gm \
	  timgm6mb-soundfont musescore-general-soundfont tmux chromium polyphone >/dev/null

run: $(STAMP)
	PYO_GUI_WX=0 $(BIN)/pgesam-live play

test: $(STAMP)
	PYO_GUI_WX=0 $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV)
