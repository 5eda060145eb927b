# c3fs — every install step lives here, so a clean clone needs only `make demo` / `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT    := fuse3 libfuse3-dev pkg-config
PYTEST_ARGS ?=
PYFUSE3 := 3.5.0
PYFUSE3_PATCHES := $(wildcard patches/pyfuse3-$(PYFUSE3)-*.patch)
PYFUSE3_BUILD := $(VENV)/build/pyfuse3

.PHONY: install sysdeps pyfuse3 demo test test-fast bench bench-full bench-peers lint clean

# Bytecode for our own modules: with PYTHONDONTWRITEBYTECODE set, every command would
# otherwise compile them again (~20 ms of each `c3fs mount`, measured cold).
install: $(VENV)/.installed
	@$(BIN)/python -m compileall -q c3fs cli bench

sysdeps:
	@if ! command -v fusermount3 >/dev/null || ! pkg-config --exists fuse3 2>/dev/null; then \
	  echo "installing $(APT)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT) >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml $(PYFUSE3_PATCHES) | sysdeps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(MAKE) --no-print-directory pyfuse3
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

# pyfuse3 from its source release with two patches (patches/README.md): reads of files
# opened without an OPEN request (FUSE_NO_OPEN_SUPPORT) are handed the inode, and its version
# is a constant instead of an importlib.metadata lookup. c3fs also runs on a stock pyfuse3,
# with one OPEN and one RELEASE request per file opened.
pyfuse3:
	rm -rf $(PYFUSE3_BUILD) && mkdir -p $(PYFUSE3_BUILD)
	$(BIN)/pip download -q --no-deps --no-binary :all: -d $(PYFUSE3_BUILD) pyfuse3==$(PYFUSE3)
	tar xzf $(PYFUSE3_BUILD)/pyfuse3-$(PYFUSE3).tar.gz -C $(PYFUSE3_BUILD)
	cd $(PYFUSE3_BUILD)/pyfuse3-$(PYFUSE3) && for p in $(PYFUSE3_PATCHES); do \
	  patch -s -p1 < $(CURDIR)/$$p || exit 1; done && rm src/pyfuse3/__init__.c
	$(BIN)/pip install -q --force-reinstall --no-deps $(PYFUSE3_BUILD)/pyfuse3-$(PYFUSE3)

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
