# vigil — build, test and run the observer cluster.
SHELL := /bin/bash
GO ?= go
GOTAGS := hashicorpmetrics
GOFLAGS_BUILD := -tags $(GOTAGS)
BIN := bin
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GOBIN_DIR := $(shell $(GO) env GOPATH)/bin
TEST_TIMEOUT ?= 30m

.PHONY: all build test soak bench-matrix steady-loss fuzz proto proto-tools lint bench demo demo-cluster clean

all: lint build

build:
	@mkdir -p $(BIN)
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/vigil ./cmd/vigil
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/vigilctl ./cmd/vigilctl
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/vigil-demo ./cmd/vigil-demo

## test: every test, race detector on (the README's test command; CI runs it).
## One package at a time (-p 1): the end-to-end packages each run several
## PostgreSQL servers and observers, and two cores shared by all of them
## would turn slow probes into the false verdicts the tests rule out.
## It first installs what the tests need when missing (deploy/lab/install-deps.sh),
## and ends by saying how many tests passed, failed and were skipped, and why
## each skipped one was (deploy/lab/testsummary reads go test -json).
test: lint
	bash deploy/lab/install-deps.sh
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/testsummary ./deploy/lab/testsummary
	bash -o pipefail -c '$(REQUIRE_AS_ROOT) PATH="$(GOBIN_DIR):$$PATH" $(GO) test $(GOFLAGS_BUILD) -json -race -count=1 -p 1 -timeout $(TEST_TIMEOUT) ./... 2>&1 | $(BIN)/testsummary'

# As root (as in CI) nothing the tests need may be missing: the tests that
# need PostgreSQL, HAProxy, the tools or network namespaces fail instead of
# skipping. Without root they skip, and the summary says so.
REQUIRE_AS_ROOT := $(if $(filter 0,$(shell id -u)),VIGIL_REQUIRE_TOOLS=1 VIGIL_REQUIRE_PG=1 VIGIL_REQUIRE_NETNS=1,)

## soak: SOAK_RUNS randomized nemesis runs (seeds SOAK_SEED, SOAK_SEED+1, …)
## on the namespace lab, every process on its own host; prints the summary
## and writes it into docs/RELIABILITY.md. Root only; hours for 200 runs.
## Re-run one seed: VIGIL_NEMESIS_SEEDS=N go test -tags hashicorpmetrics \
##   -run TestNemesisFixedSeeds -v ./deploy/lab/nemesis/
SOAK_RUNS ?= 200
SOAK_SEED ?= 1000
SOAK_LENGTH ?= 20s
soak:
	bash deploy/lab/install-deps.sh
	VIGIL_REQUIRE_TOOLS=1 VIGIL_REQUIRE_PG=1 VIGIL_REQUIRE_NETNS=1 \
	VIGIL_SOAK_RUNS=$(SOAK_RUNS) VIGIL_SOAK_SEED=$(SOAK_SEED) VIGIL_SOAK_LENGTH=$(SOAK_LENGTH) \
	VIGIL_SOAK_DOC=$(CURDIR)/docs/RELIABILITY.md \
	$(GO) test $(GOFLAGS_BUILD) -count=1 -timeout 0 -run '^TestSoak$$' -v ./deploy/lab/nemesis/

## bench-matrix: the failure-mode matrix (crash, host death, hung primary,
## partition, one-way partition, stalled disk × 500ms/2s and 200ms/1s ×
## async and sync; VIP and HAProxy paths measured in each run),
## BENCH_RUNS runs a cell, written into docs/BENCHMARKS.md. Root only.
BENCH_RUNS ?= 10
bench-matrix:
	bash deploy/lab/install-deps.sh
	VIGIL_REQUIRE_TOOLS=1 VIGIL_REQUIRE_PG=1 VIGIL_REQUIRE_NETNS=1 \
	VIGIL_BENCH_MATRIX=1 VIGIL_BENCH_RUNS=$(BENCH_RUNS) VIGIL_BENCH_DOC=$(CURDIR)/docs/BENCHMARKS.md \
	$(GO) test $(GOFLAGS_BUILD) -count=1 -timeout 0 -run '^TestBenchMatrix$$' -v ./deploy/lab/nemesis/

## steady-loss: the false-failover proof of an operating point: steady
## writes with STEADY_LOSS % random packet loss on every observer for
## STEADY_FOR (default 1h at 200ms/1s; STEADY_OP=500ms/2s for the other),
## no other fault; the result goes into docs/BENCHMARKS.md. Root only.
STEADY_FOR ?= 1h
STEADY_LOSS ?= 5
STEADY_OP ?= 200ms/1s
steady-loss:
	bash deploy/lab/install-deps.sh
	VIGIL_REQUIRE_TOOLS=1 VIGIL_REQUIRE_PG=1 VIGIL_REQUIRE_NETNS=1 \
	VIGIL_STEADY_FOR=$(STEADY_FOR) VIGIL_STEADY_LOSS=$(STEADY_LOSS) VIGIL_STEADY_OP=$(STEADY_OP) \
	VIGIL_BENCH_DOC=$(CURDIR)/docs/BENCHMARKS.md \
	$(GO) test $(GOFLAGS_BUILD) -count=1 -timeout 0 -run '^TestSteadyLoss$$' -v ./deploy/lab/nemesis/

proto-tools:
	@command -v protoc >/dev/null || { echo "protoc missing: apt-get install -y protobuf-compiler libprotobuf-dev" >&2; exit 1; }
	GOBIN=$(GOBIN_DIR) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(GOBIN_DIR) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

## proto: regenerate the committed protobuf code from proto/.
proto: proto-tools
	cd proto && PATH=$(GOBIN_DIR):$$PATH protoc -I . -I /usr/include \
		--go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative \
		vigil/v1/*.proto

## lint: gofmt and go vet must be clean.
lint:
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './.git/*')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(GOFLAGS_BUILD) ./...

## fuzz: a short run of every fuzz target (FUZZTIME each); CI runs it.
FUZZTIME ?= 10s
fuzz:
	$(GO) test $(GOFLAGS_BUILD) -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./cluster/config/
	$(GO) test $(GOFLAGS_BUILD) -run '^$$' -fuzz '^FuzzApply$$' -fuzztime $(FUZZTIME) ./fsm/
	$(GO) test $(GOFLAGS_BUILD) -run '^$$' -fuzz '^FuzzDecodeVotes$$' -fuzztime $(FUZZTIME) ./health/
	$(GO) test $(GOFLAGS_BUILD) -run '^$$' -fuzz '^FuzzAgentRequests$$' -fuzztime $(FUZZTIME) ./failover/nodeagent/

## bench: leader re-election and Raft commit latency (figures go to docs/BENCHMARKS.md).
bench:
	$(GO) test $(GOFLAGS_BUILD) -run '^$$' -bench . -benchtime 1x -timeout 30m ./...

## demo: three real observers fail a real PostgreSQL primary over; see README.md.
demo: build
	./$(BIN)/vigil-demo -bin $(BIN)

## demo-cluster: the observer cluster alone (election, forwarding, leader kill).
demo-cluster: build
	./deploy/demo/demo.sh

clean:
	rm -rf $(BIN)
