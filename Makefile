# memring — the two commands that matter: `make run` and `make test`.
# One cargo profile (release) serves run, test and bench: RocksDB and usearch take ~15 minutes to
# compile per profile on a 2-core machine, so building two profiles would double every clean build.

CARGO ?= cargo
PROFILE_FLAGS := --release
BIN_DIR := $(or $(CARGO_TARGET_DIR),target)/release

.PHONY: deps test-deps build run cluster bench-filter bench-migrate bench-repl bench-scale bench-embed bench-bm25 fuzz chaos test unit integration lint fmt bench clean-data

# Debian packages, then the built-in embedder's model files (once, into ~/.cache/memring/models).
deps:
	@scripts/install-deps.sh
	@scripts/fetch-model.py >/dev/null

build: deps
	$(CARGO) build $(PROFILE_FLAGS) --workspace --bins

## Start a local cluster (router :7700, shards :7711-7713, control plane :7800) on the embedded ring store.
run: build
	@scripts/run-local.sh

## A local multi-process cluster on etcd (etcd, 3 shards, 2 routers, control plane).
cluster: build
	@scripts/run-cluster.sh

## Unit tests and integration tests (real binaries, real RocksDB, real etcd, free loopback ports),
## then the Python client's lints and tests against the same binaries.
## The router is built with its test-only debug endpoints here (feature memring-router/testing).
TEST_FEATURES := --features memring-router/testing,memring-control/testing
# The tests also need Chromium (the dashboard test opens the control plane's page headless).
test-deps:
	@scripts/install-deps.sh --with-chromium
	@scripts/fetch-model.py >/dev/null

test: test-deps
	yamllint -d '{extends: relaxed, rules: {line-length: {max: 200}}}' deploy
	scripts/check-manifests.py
	$$(scripts/install-manifest-validator.sh) --strict --quiet deploy/kubernetes/*.yaml
	# --all-targets: the binaries are built with the features the tests' dev-dependencies unify
	# (else `cargo test` would compile candle a second time with another feature set).
	$(CARGO) build $(PROFILE_FLAGS) --workspace --all-targets $(TEST_FEATURES)
	$(CARGO) test $(PROFILE_FLAGS) --workspace --no-fail-fast $(TEST_FEATURES)
	# The Python client (clients/python): ruff, mypy --strict and pytest against the binaries above.
	scripts/test-python.sh

unit: deps
	$(CARGO) test $(PROFILE_FLAGS) --workspace --lib --bins

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(PROFILE_FLAGS) --workspace --all-targets $(TEST_FEATURES) -- -D warnings

fmt:
	$(CARGO) fmt --all

## The benchmark of docs/benchmarks.md (starts its own cluster in a temp dir).
bench: build
	$(BIN_DIR)/memring-bench $(BENCH_ARGS)

## Filtered vector search on one 100k × 384 partition, with and without the metadata index.
bench-filter: build
	$(BIN_DIR)/memring-bench --tenants 1 --filters $(BENCH_ARGS)
	$(BIN_DIR)/memring-bench --tenants 1 --filters --shard-flag=--metadata-index-min=1000000000 $(BENCH_ARGS)

## Online migration and rebalance, measured (docs/benchmarks.md).
bench-migrate: build
	$(BIN_DIR)/memring-migrate-bench $(BENCH_ARGS)

## What replication costs a write (docs/benchmarks.md; starts its own etcd).
bench-repl: build
	$(BIN_DIR)/memring-repl-bench $(BENCH_ARGS)

## The built-in embedder alone and text writes through the router (docs/benchmarks.md).
bench-embed: build
	$(BIN_DIR)/memring-embed-bench $(BENCH_ARGS)

## Keyword search against bm25s and tantivy on the same corpus and queries (docs/benchmarks.md).
BENCH_VENV := $(HOME)/.cache/memring/bench-venv
bench-bm25: build
	@[ -x $(BENCH_VENV)/bin/python ] || python3 -m venv $(BENCH_VENV)
	@$(BENCH_VENV)/bin/python -c 'import bm25s, numpy' 2>/dev/null || $(BENCH_VENV)/bin/pip install -q bm25s==0.3.16 numpy
	$(CARGO) build $(PROFILE_FLAGS) -p memring-tests --features tantivy-peer --bin memring-keyword-bench
	CARGO_TARGET_DIR=$(or $(CARGO_TARGET_DIR),target) $(BENCH_VENV)/bin/python scripts/bm25-overlap.py $(BENCH_ARGS)

# What many tenants cost a replicated cluster: 1,000 and then 100,000 tenants (docs/benchmarks.md).
bench-scale: build
	$(BIN_DIR)/memring-repl-bench --scale-tenants 1000,100000 $(BENCH_ARGS)

# The request-parser fuzz of `make test` with 25x the cases (500,000 per property), then the
# hostile-request test against running binaries.
fuzz: deps
	MEMRING_FUZZ_CASES=$${MEMRING_FUZZ_CASES:-500000} $(CARGO) test $(PROFILE_FLAGS) -p memring-common --test hostile_input
	$(CARGO) test $(PROFILE_FLAGS) --workspace $(TEST_FEATURES) --test hostile

# The randomized fault test of `make test` for longer (faults keep coming for MEMRING_CHAOS_SECS,
# default 600; MEMRING_CHAOS_SEED replays a run), then the replication model with wider bounds,
# breadth-first until it holds half the machine's memory (MEMRING_MODEL_MAX_GIB): it prints how
# many steps deep every sequence was checked, or that the bounds were covered.
chaos: test-deps
	$(CARGO) build $(PROFILE_FLAGS) --workspace --bins $(TEST_FEATURES)
	MEMRING_CHAOS_SECS=$${MEMRING_CHAOS_SECS:-600} $(CARGO) test $(PROFILE_FLAGS) -p memring-tests $(TEST_FEATURES) --test chaos -- --nocapture
	MEMRING_MODEL_WRITES=$${MEMRING_MODEL_WRITES:-3} MEMRING_MODEL_CHANGES=$${MEMRING_MODEL_CHANGES:-4} MEMRING_MODEL_FAULTS=$${MEMRING_MODEL_FAULTS:-2} \
		$(CARGO) test $(PROFILE_FLAGS) -p memring-shard --lib wider_bounds -- --ignored --nocapture

clean-data:
	rm -rf data data-cluster
