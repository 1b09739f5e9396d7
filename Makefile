# Tend — build, test, generate, demo.
SHELL := /bin/bash
GO ?= go
GOBIN := $(shell $(GO) env GOPATH)/bin
export PATH := $(GOBIN):$(PATH)

# Pinned code generators (buf runs them as local plugins).
BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0

BINARIES := tend-controlplane tend-agent tendctl tend-demo tend-demo-service tend-bench
# Action plugins: one binary each, tend-plugin-<name>.
PLUGINS := $(wildcard plugins/*/cmd/tend-plugin-*)
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X tend.dev/tend/internal/version.Version=$(VERSION)
# Static binaries without gRPC's x/net/trace debug pages (and the
# html/template it links): smaller, and fewer pages resident in every agent
# (docs/BENCHMARKS.md, T9). Nothing in Tend needs cgo.
BUILD_TAGS := grpcnotrace
# Test timeout: the e2e suite includes a 30 s control-plane outage.
TEST_TIMEOUT ?= 20m
# Time each fuzz target runs in `make fuzz` (scripts/test.sh uses 4s).
FUZZTIME ?= 10s

.PHONY: all build build-failpoints test test-unit test-e2e fuzz robustness generate lint demo bench tools deps clean fmt vet check-generated

all: build

deps:
	@bash scripts/deps.sh

build:
	@mkdir -p bin
	CGO_ENABLED=0 $(GO) build -tags $(BUILD_TAGS) -trimpath -ldflags "$(LDFLAGS)" -o bin/ $(addprefix ./cmd/,$(BINARIES)) $(addprefix ./,$(PLUGINS))

# The binaries with crash points (internal/failpoint, armed by
# TEND_FAILPOINTS) for the robustness tests. Never ship these.
build-failpoints:
	@mkdir -p bin-fp
	CGO_ENABLED=0 $(GO) build -tags failpoints,$(BUILD_TAGS) -trimpath -ldflags "$(LDFLAGS)" -o bin-fp/ $(addprefix ./cmd/,$(BINARIES)) $(addprefix ./,$(PLUGINS))

# The fault scenarios (tests/e2e/robust_test.go) in a loop, longer than in
# `make test`: per scenario, runs, faults injected, results and tasks
# checked, invariant violations.
ROBUST_RUNS ?= 3
ROBUST_FAULTS ?= 2
ROBUST_PARTITION ?= 60s
ROBUST_STOP ?= 20s
robustness: deps build-failpoints
	@ROBUST_RUNS=$(ROBUST_RUNS) ROBUST_FAULTS=$(ROBUST_FAULTS) ROBUST_PARTITION=$(ROBUST_PARTITION) ROBUST_STOP=$(ROBUST_STOP) \
		ROBUST_LONG=1 TEND_FP_BIN_DIR=$(CURDIR)/bin-fp bash scripts/robustness.sh

# The whole suite: vet, gofmt, unit and integration tests under -race, and
# the e2e tests against the real binaries.
test: deps
	@bash scripts/test.sh

test-unit:
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $$($(GO) list ./... | grep -v /tests/e2e)

test-e2e: build
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./tests/e2e/...

# Every fuzz target for FUZZTIME; fails on any crasher (kept in
# <package>/testdata/fuzz as a regression seed).
fuzz:
	@FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

tools:
	@test -x $(GOBIN)/protoc-gen-go && $(GOBIN)/protoc-gen-go --version | grep -q $(PROTOC_GEN_GO_VERSION) || $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@test -x $(GOBIN)/protoc-gen-go-grpc && $(GOBIN)/protoc-gen-go-grpc --version | grep -q $(PROTOC_GEN_GO_GRPC_VERSION:v%=%) || $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	@test -x $(GOBIN)/buf && $(GOBIN)/buf --version | grep -q $(BUF_VERSION:v%=%) || { echo "installing buf $(BUF_VERSION) (takes a few minutes the first time)"; $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION); }

generate: tools
	buf lint
	buf generate

# Fails if the committed generated code differs from what `make generate` makes.
check-generated: generate
	@git diff --exit-code --stat -- proto || { echo "generated code is stale: run 'make generate' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- proto)" || { git status --porcelain -- proto; echo "make generate created untracked files"; exit 1; }

lint: tools
	buf lint
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }

demo: deps build
	./bin/tend-demo --bin-dir bin

# A short scale run: 500 simulated agents (mTLS, 10 checks every 10 s) for
# 30 s against a control plane started on a temporary data dir; prints the
# table of docs/BENCHMARKS.md. BENCH_FLAGS reach the full targets, e.g.
# make bench BENCH_FLAGS="--agents 50000 --duration 10m --restart term".
BENCH_FLAGS ?=
bench: build
	./bin/tend-bench --bin-dir bin --agents 500 --duration 30s $(BENCH_FLAGS)

clean:
	rm -rf bin bin-fp
