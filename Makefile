# sessionlock developer entry points. `make check` is the README's test command and what CI runs.
PY ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYDIRS := $(wildcard python tests examples noxfile.py)
# `make matrix NOX_TAGS=smoke`: only the interpreters other than 3.11 (CI: `make test` already
# ran the full suite on 3.11).
NOX_TAGS ?= matrix

.PHONY: help deps install lint format test bench bench-redis bench-redis-session check demo \
	matrix wheels clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 22

deps:  ## system packages the tests need (redis-server), installed only when missing
	@command -v redis-server >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server; }
	@redis-server --version

install:  ## build the Rust core (release) and install the package with test, lint, matrix extras
	$(PY) -m pip install -q -e '.[test,lint,matrix]'

lint:  ## cargo fmt + clippy (both crates), ruff, mypy, stubtest (read-only)
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(PY) -m ruff check $(PYDIRS)
	$(PY) -m ruff format --check $(PYDIRS)
	$(PY) -m mypy
	$(PY) -m mypy.stubtest sessionlock._sessionlock --allowlist stubtest-allowlist.txt

format:  ## rewrite the sources in house style (cargo fmt, ruff --fix, ruff format)
	cargo fmt --all
	$(PY) -m ruff check --fix $(PYDIRS)
	$(PY) -m ruff format $(PYDIRS)

test:  ## cargo test (the core without Python, then the binding), then the pytest suite
	SESSIONLOCK_REQUIRE_REDIS=1 cargo test --workspace --quiet
	$(PY) -m pytest -q

bench: bench-core bench-redis bench-redis-session  ## all benchmarks (needs only the bench extra)
	$(PY) tests/benchmarks/bench_manager.py

bench-core:  ## criterion benchmarks of the pure-Rust core (no Python): session map, key locks
	cargo bench -p sessionlock-core

bench-redis:  ## RedisLock vs redis-py Lock, python-redis-lock, pottery (needs the bench extra)
	$(PY) tests/benchmarks/bench_redis_lock.py

bench-redis-session:  ## RedisSessionManager get/set/update vs bare redis-py, 4-process throughput
	$(PY) tests/benchmarks/bench_redis_session.py

check: deps install lint test  ## the README's test command: deps, install, lint, test

demo:  ## python -m sessionlock.demo
	$(PY) -m sessionlock.demo

matrix:  ## the suite on every CPython 3.9-3.13 found (full on 3.11, smoke subset elsewhere)
	@$(PY) -m nox --version >/dev/null 2>&1 || { \
		echo "nox is missing: make install (it installs the matrix extra)" >&2; exit 1; }
	$(PY) -m nox -t $(NOX_TAGS)

wheels:  ## stripped release wheels into dist/ for every interpreter found (+ cp314t if any)
	@$(PY) -m nox --version >/dev/null 2>&1 || { \
		echo "nox is missing: make install (it installs the matrix extra)" >&2; exit 1; }
	$(PY) -m nox -s wheels

# target/ is about 1.2 GB after `make check matrix` (debug ~0.94 GB: clippy + cargo test;
# release ~0.26 GB, reused by every interpreter); cargo never prunes it, so this resets it.
clean:  ## remove build output: target/ (all profiles), dist/, .nox/, caches
	cargo clean
	rm -rf dist .nox .mypy_cache .ruff_cache .hypothesis
	find python tests examples -name __pycache__ -type d -prune -exec rm -rf {} +
