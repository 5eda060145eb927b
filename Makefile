# c3fs — every install step lives here, so a clean clone needs only `make demo` / `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT    := fuse3 libfuse3-dev pkg-config
# The browser test of `c3fs serve` (headless chromium); `make demo` does without it.
TEST_APT := chromium
# three workers on two cores (pytest-xdist): the FUSE, S3 and subprocess cases wait, and with
# two workers the cores were idle a fifth of the time (13:31 -> 11:17 on a 2-vCPU machine); the
# slowest tests are named at the end of every run (the suite must stay under 15 minutes)
PYTEST_ARGS ?= --durations=15 -n 3 --dist worksteal
PYFUSE3 := 3.5.0
PYFUSE3_SHA256 := 88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24
PYFUSE3_PATCHES := $(wildcard patches/pyfuse3-$(PYFUSE3)-*.patch)
PYFUSE3_BUILD = $(VENV)/build/pyfuse3
# Exact versions and hashes of every Python dependency (runtime, test, bench) and of what the
# install builds with; `make lock` makes them anew with uv (README: "Dependencies").
LOCK := requirements.lock
BUILD_LOCK := requirements-build.lock
UV := uv==0.13.9
LATEST := .venv-latest

.PHONY: install sysdeps test-sysdeps pyfuse3 demo test test-fast test-random test-latest lock bench \
	bench-full bench-peers lint clean

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

test-sysdeps:
	@if ! command -v chromium >/dev/null; then \
	  echo "installing $(TEST_APT)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(TEST_APT) >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml $(LOCK) $(BUILD_LOCK) $(PYFUSE3_PATCHES) | sysdeps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps -r $(BUILD_LOCK) -r $(LOCK)
	$(MAKE) --no-print-directory pyfuse3 ISOLATION=--no-build-isolation
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

# pyfuse3 from its source release with seven patches (patches/README.md): reads of files
# opened without an OPEN request (FUSE_NO_OPEN_SUPPORT) are handed the inode, its version
# is a constant instead of an importlib.metadata lookup, a READ's reply may be a list of
# buffers (sent with writev, without the GIL), the kernel may send plain READDIR when
# names suffice (`find`), a readdir reply takes a run of entries in one call
# (`readdir_reply_many`: no EntryAttributes and no call per entry; sparse files'
# st_blocks given), one task takes requests and runs their handlers until one waits (no
# hand-over between tasks per request), and SEEK_DATA/SEEK_HOLE reach `Operations.lseek`
# (FUSE_LSEEK: `cp --sparse=auto` skips a sparse file's holes). c3fs also runs on a stock
# pyfuse3, with one OPEN and one RELEASE request per file opened, each READ's pieces
# joined, every READDIR a READDIRPLUS and a reply call per directory entry, and every file
# taken for data by SEEK_HOLE (the kernel's fallback).
pyfuse3:
	rm -rf $(PYFUSE3_BUILD) && mkdir -p $(PYFUSE3_BUILD)
	$(BIN)/pip download -q --no-deps --no-binary :all: -d $(PYFUSE3_BUILD) pyfuse3==$(PYFUSE3)
	echo "$(PYFUSE3_SHA256)  $(PYFUSE3_BUILD)/pyfuse3-$(PYFUSE3).tar.gz" | sha256sum -c --quiet
	tar xzf $(PYFUSE3_BUILD)/pyfuse3-$(PYFUSE3).tar.gz -C $(PYFUSE3_BUILD)
	cd $(PYFUSE3_BUILD)/pyfuse3-$(PYFUSE3) && for p in $(PYFUSE3_PATCHES); do \
	  patch -s -p1 < $(CURDIR)/$$p || exit 1; done && rm src/pyfuse3/__init__.c
	$(BIN)/pip install -q --force-reinstall --no-deps $(ISOLATION) $(PYFUSE3_BUILD)/pyfuse3-$(PYFUSE3)

demo: install
	$(BIN)/python -m c3fs_cli.demo

test: install test-sysdeps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install test-sysdeps
	$(BIN)/python -m pytest -q -m 'not slow' $(PYTEST_ARGS)

# The suite in a random order (pytest-randomly; `-p randomly -p "randomly_seed=N"` repeats one).
test-random: install test-sysdeps
	$(BIN)/python -m pytest -q -p randomly $(PYTEST_ARGS)

# The suite against the newest versions pyproject.toml's ranges allow: a fresh venv, no lock,
# so an upgrade that breaks us is found here, on purpose. Prints the versions that moved.
test-latest: sysdeps test-sysdeps
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	$(MAKE) --no-print-directory pyfuse3 VENV=$(LATEST)
	$(LATEST)/bin/pip install -q -e '.[test,bench]'
	$(LATEST)/bin/python requirements/moved.py $(LOCK)
	$(LATEST)/bin/python -m pytest -q $(PYTEST_ARGS)

# Lock anew (after changing a range in pyproject.toml or requirements/build.in); review the
# diff, run `make test`, commit both files.
lock:
	rm -rf $(VENV)/lock && $(PYTHON) -m venv $(VENV)/lock && $(VENV)/lock/bin/pip install -q $(UV)
	$(VENV)/lock/bin/uv pip compile -q --generate-hashes --custom-compile-command "make lock" --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --extra test --extra bench \
	  --no-emit-package pyfuse3 -o $(LOCK) pyproject.toml
	$(VENV)/lock/bin/uv pip compile -q --generate-hashes --custom-compile-command "make lock" --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 -o $(BUILD_LOCK) requirements/build.in

bench: install
	$(BIN)/python -m bench run --quick

bench-full: install
	$(BIN)/python -m bench run

# The peers, and the remote bench's rig: rclone and s3fs from Debian, the S3 server s3rver
# 3.7.1 with npm into bench/s3rver/node_modules from its lock file (python -m bench remote).
# (npm from Debian only where there is none: Debian's conflicts with a nodejs that ships its own)
bench-peers:
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq restic borgbackup squashfs-tools squashfuse casync \
	  rclone s3fs $$(command -v npm >/dev/null || echo npm) >/dev/null
	cd bench/s3rver && npm ci --no-audit --no-fund --silent

lint: install
	$(BIN)/ruff check c3fs cli tests bench

clean:
	rm -rf $(VENV) $(LATEST) build *.egg-info .pytest_cache
