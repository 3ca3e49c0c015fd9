# Quick start: `make run` (the bot) and `make test` (the whole suite). See README.md.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8000

.PHONY: run test lint validate graph chat bench clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the dependency list changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@ $(VENV)/.installed $(VENV)/.installed-dev

run: $(VENV)/.installed
	PORT=$(PORT) $(BIN)/gunicorn -c gunicorn.conf.py server:app

# The browser tests (tests/browser) drive Debian's chromium through Playwright: Playwright's own
# browser download cannot work here. As root, install it (and a Japanese font, so screenshots
# and layout are real) when missing; otherwise say how. tests/browser fails in CI without it.
CHROMIUM ?= /usr/bin/chromium
BROWSER_PACKAGES := chromium fonts-liberation fonts-noto-cjk
browser:
	@if [ -x "$(CHROMIUM)" ] && dpkg-query -W -f='$${Status}' fonts-noto-cjk 2>/dev/null \
	     | grep -q "ok installed"; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "installing $(BROWSER_PACKAGES) for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $(BROWSER_PACKAGES) >/dev/null; \
	else echo "browser tests need: apt-get install $(BROWSER_PACKAGES)"; fi

test: $(VENV)/.installed-dev browser
	$(BIN)/ruff check .
	$(BIN)/python -m bot validate
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

validate: $(VENV)/.installed
	$(BIN)/python -m bot validate

graph: $(VENV)/.installed
	$(BIN)/python -m bot graph --out docs/handbook-flow.mmd

chat: $(VENV)/.installed
	$(BIN)/python -m bot chat

# `make bench BENCH_CLUSTER=1`: the same run against a throwaway local 3+3 Redis Cluster.
bench: $(VENV)/.installed-bench
	BENCH_CLUSTER=$(BENCH_CLUSTER) $(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
