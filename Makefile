# semsearch: `make run` serves the demo, `make test` runs every test. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 50051
DATA_DIR ?= index_data
CONSOLE_PORT ?= 8080
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Where pip may also look for torch==2.13.0. Unset, only the default package index is used (enough where a
# CPU build is on it, as on this project's machines); elsewhere the default index serves the multi-GB CUDA
# build, so pass PyTorch's CPU index, as server/Dockerfile does:
#   make run TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=
TORCH_INDEX_ARGS := $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))
# The slowest tests, printed after every `make test`, so that a test growing slow is seen.
TEST_DURATIONS := --durations=15
# make test runs the test files on this many worker processes (pytest-xdist), each file whole on one worker
# (module fixtures start one server per file); the files with slow tests are handed out first (tests/conftest.py).
TEST_WORKERS ?= 2
TEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile

.PHONY: run test test-fast fuzz long soak install lock lock-upgrade bench lint proto clean

# Every install takes its versions from requirements.lock (constraints: the same versions on every machine);
# `make lock` regenerates it after a pyproject.toml changes, `make lock-upgrade` moves every pin to the newest.
LOCK := requirements.lock
PIP_VERSION := 26.3
PIP_TOOLS_VERSION := 7.6.2
LOCK_VENV := .venv-lock
SERVE_STAMP := $(VENV)/.installed-serve
TEST_STAMP := $(VENV)/.installed-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==$(PIP_VERSION)

# What serving needs: the server, the client and the fast engines (no test, Milvus or Ray extras).
# torch is pinned (==2.13.0, a CPU build in the lock); TORCH_INDEX_URL (above) says where that build is.
$(SERVE_STAMP): $(LOCK) client/pyproject.toml server/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH_INDEX_ARGS) -c $(LOCK) -e ./client -e ./server
	touch $@

$(TEST_STAMP): $(LOCK) client/pyproject.toml server/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH_INDEX_ARGS) -c $(LOCK) -e './client[langchain,llama-index,haystack,integrations-test]' -e './server[test,milvus,ray]'
	touch $@ $(SERVE_STAMP)

install: $(TEST_STAMP)

$(LOCK_VENV)/bin/pip-compile:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet pip==$(PIP_VERSION) pip-tools==$(PIP_TOOLS_VERSION)

PIP_COMPILE := $(LOCK_VENV)/bin/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links \
	--unsafe-package semsearch-client --unsafe-package semsearch-server $(TORCH_INDEX_ARGS) -o $(LOCK) requirements.in

lock: $(LOCK_VENV)/bin/pip-compile
	$(PIP_COMPILE)

lock-upgrade: $(LOCK_VENV)/bin/pip-compile
	$(PIP_COMPILE) --upgrade

run: $(SERVE_STAMP)
	@echo "console: http://localhost:$(CONSOLE_PORT)/?collection=demo&q=I%20drink%20water%20with%20wine"
	$(BIN)/semsearch-server --port $(PORT) --data-dir $(DATA_DIR) --seed-demo true --console-port $(CONSOLE_PORT)

test: $(TEST_STAMP) lint
	$(BIN)/python -m pytest -q $(TEST_PARALLEL) $(TEST_DURATIONS) tests

# The fast subset: no process kills, no docker-compose or load checks.
test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -q $(TEST_PARALLEL) $(TEST_DURATIONS) -m "not slow" tests

# The long fuzz run against a real server process (a bounded profile of it is part of `make test`):
# prints each RPC's status codes; fails on UNKNOWN/INTERNAL, a crash or a change by a refused request.
FUZZ_REQUESTS ?= 100000
fuzz: $(TEST_STAMP)
	$(BIN)/python tests/fuzz_long.py --requests $(FUZZ_REQUESTS)

# The long versions of make test's bounded loops: the 20-kill durability loop, 5 HNSW kills, 30 disk fill/free
# cycles mid-ingest and 10 under 4 writers and 4 readers, then the 100k-request fuzz run (make test: 3 kills,
# 1 HNSW kill, 4 and 3 cycles, a bounded fuzz profile).
LONG_KILLS ?= 20
long: $(TEST_STAMP)
	SEMSEARCH_TEST_KILLS=$(LONG_KILLS) SEMSEARCH_TEST_HNSW_KILLS=5 SEMSEARCH_TEST_DISK_CYCLES=30 \
		SEMSEARCH_TEST_DISK_LOAD_CYCLES=10 \
		$(BIN)/python -m pytest -q $(TEST_DURATIONS) tests/test_durability.py tests/test_disk_full.py
	$(BIN)/python tests/fuzz_long.py --requests $(FUZZ_REQUESTS)

# The soak: SOAK_MINUTES of mixed traffic on every kind of RPC against a real server process that is SIGKILLed
# every 1-3 minutes and restarted on the same data directory; fails on an acknowledged write lost, any
# INTERNAL/UNKNOWN, a failed call outside a kill window or RSS growing >10% after the warm-up (make test: 2 min).
SOAK_MINUTES ?= 30
SOAK_SEED ?= 1
soak: $(TEST_STAMP)
	$(BIN)/python tests/soak.py --minutes $(SOAK_MINUTES) --kill-every 1 3 --seed $(SOAK_SEED)

# Every benchmark with its defaults (scale.py alone takes about an hour at 1M vectors on 2 cores).
# Each prints PASS/MISS; a MISS is reported, not hidden, and does not stop the others.
BENCHMARKS := service_speed embed_backends explain_faithfulness indexer_throughput load footprint first_start scale retrieval_quality fusion_sweep stalled_streams
bench: $(TEST_STAMP)
	status=0; for name in $(BENCHMARKS); do echo "== benchmarks/$$name.py"; \
		$(BIN)/python benchmarks/$$name.py || status=1; done; exit $$status

lint: $(TEST_STAMP)
	$(BIN)/ruff check client/src server/src tests benchmarks examples
	$(BIN)/ruff format --check client/src server/src tests benchmarks examples

# Regenerates the committed stubs with the pinned grpcio-tools; tests/test_client_package.py fails if they differ from proto/.
proto: $(TEST_STAMP)
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=client/src --pyi_out=client/src \
		--grpc_python_out=client/src proto/semsearch/v1/search_service.proto

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache
