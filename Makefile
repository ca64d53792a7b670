# sessionlock developer entry points. `make check` is the README's test command and what CI runs.
PY ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYDIRS := $(wildcard python tests examples)

.PHONY: deps install lint test bench bench-redis bench-redis-session check demo

deps:  ## system packages the tests need (redis-server), installed only when missing
	@command -v redis-server >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server; }
	@redis-server --version

install:  ## build the Rust core (release) and install the package with test and lint extras
	$(PY) -m pip install -q -e '.[test,lint]'

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(PY) -m ruff check $(PYDIRS)
	$(PY) -m ruff format --check $(PYDIRS)
	$(PY) -m mypy
	$(PY) -m mypy.stubtest sessionlock._sessionlock --allowlist stubtest-allowlist.txt

test:
	cargo test --workspace --quiet
	$(PY) -m pytest -q

bench: bench-redis bench-redis-session
	$(PY) tests/benchmarks/bench_manager.py

bench-redis:  ## RedisLock vs redis-py Lock, python-redis-lock, pottery (needs the bench extra)
	$(PY) tests/benchmarks/bench_redis_lock.py

bench-redis-session:  ## RedisSessionManager get/set/update vs bare redis-py, 4-process throughput
	$(PY) tests/benchmarks/bench_redis_session.py

check: deps install lint test

demo:
	$(PY) -m sessionlock.demo
