# c3fs — every install step lives here, so a clean clone needs only `make demo` / `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT    := fuse3 libfuse3-dev pkg-config
PYTEST_ARGS ?=

.PHONY: install sysdeps demo test test-fast bench bench-full bench-peers lint clean

install: $(VENV)/.installed

sysdeps:
	@if ! command -v fusermount3 >/dev/null || ! pkg-config --exists fuse3 2>/dev/null; then \
	  echo "installing $(APT)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT) >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml | sysdeps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

demo: install
	$(BIN)/python -m cli.demo

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m 'not slow' $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench run --quick

bench-full: install
	$(BIN)/python -m bench run

bench-peers:
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq restic borgbackup squashfs-tools squashfuse casync >/dev/null

lint: install
	$(BIN)/ruff check c3fs cli tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
