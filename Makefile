# The two commands a new machine needs: `make demo` and `make test` (both install everything first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DB ?= .memaudit/demo.duckdb
PROFILE ?= standard
PORT ?= 8501
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
# faiss-cpu and faiss-gpu are the same module: never both. GPU machines get faiss-gpu.
FAISS ?= $(shell nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
# open_clip and huggingface_hub must never wait on a network this machine does not have.
export HF_HUB_OFFLINE ?= 1

.PHONY: install browser demo app test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,$(FAISS),ray]'
	touch $@

# Debian's chromium for the real-browser tests (Playwright drives it; never `playwright install`).
browser:
	@command -v chromium >/dev/null 2>&1 || $(SUDO) apt-get install -y -qq chromium \
		|| ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

demo: install
	$(BIN)/memaudit run --data default --db $(DB) --profile $(PROFILE)
	$(BIN)/memaudit app --db $(DB) --port $(PORT)

app: install
	$(BIN)/memaudit app --db $(DB) --port $(PORT)

test: install browser
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/pipeline_stages.py

clean:
	rm -rf $(VENV) .memaudit .pytest_cache *.egg-info
