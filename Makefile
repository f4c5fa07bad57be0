# semsearch: `make run` serves the demo, `make test` runs every test. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 50051
DATA_DIR ?= index_data
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

.PHONY: run test test-fast fuzz install bench lint proto clean

$(STAMP): client/pyproject.toml server/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned in server/pyproject.toml (==2.13.0); TORCH_INDEX_URL (above) says where its CPU build is.
	$(BIN)/python -m pip install --quiet $(TORCH_INDEX_ARGS) -e ./client -e './server[test,milvus,ray]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/semsearch-server --port $(PORT) --data-dir $(DATA_DIR) --seed-demo true

test: $(STAMP) lint
	$(BIN)/python -m pytest -q $(TEST_DURATIONS) tests

# The fast subset: no process kills, no docker-compose or load checks.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(TEST_DURATIONS) -m "not slow" tests

# The long fuzz run against a real server process (a bounded profile of it is part of `make test`):
# prints each RPC's status codes; fails on UNKNOWN/INTERNAL, a crash or a change by a refused request.
FUZZ_REQUESTS ?= 100000
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz_long.py --requests $(FUZZ_REQUESTS)

# Every benchmark with its defaults (scale.py alone takes about an hour at 1M vectors on 2 cores).
# Each prints PASS/MISS; a MISS is reported, not hidden, and does not stop the others.
BENCHMARKS := service_speed embed_backends explain_faithfulness indexer_throughput load footprint scale retrieval_quality fusion_sweep stalled_streams
bench: $(STAMP)
	status=0; for name in $(BENCHMARKS); do echo "== benchmarks/$$name.py"; \
		$(BIN)/python benchmarks/$$name.py || status=1; done; exit $$status

lint: $(STAMP)
	$(BIN)/ruff check client/src server/src tests benchmarks
	$(BIN)/ruff format --check client/src server/src tests benchmarks

# Regenerates the committed stubs; tests/test_stubs.py fails if they differ from proto/.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=client/src --pyi_out=client/src \
		--grpc_python_out=client/src proto/semsearch/v1/search_service.proto

clean:
	rm -rf $(VENV) .pytest_cache
