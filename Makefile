# Tend — build, test, generate, demo.
SHELL := /bin/bash
GO ?= go
GOBIN := $(shell $(GO) env GOPATH)/bin
export PATH := $(GOBIN):$(PATH)

# Pinned code generators (buf runs them as local plugins).
BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0

BINARIES := tend-controlplane tend-agent tendctl tend-demo tend-demo-service
# Action plugins: one binary each, tend-plugin-<name>.
PLUGINS := $(wildcard plugins/*/cmd/tend-plugin-*)
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X tend.dev/tend/internal/version.Version=$(VERSION)
# Test timeout: the e2e suite includes a 30 s control-plane outage.
TEST_TIMEOUT ?= 20m

.PHONY: all build test test-unit test-e2e generate lint demo bench tools deps clean fmt vet check-generated

all: build

deps:
	@bash scripts/deps.sh

build:
	@mkdir -p bin
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/ $(addprefix ./cmd/,$(BINARIES)) $(addprefix ./,$(PLUGINS))

# The whole suite: vet, gofmt, unit and integration tests under -race, and
# the e2e tests against the real binaries.
test: deps
	@bash scripts/test.sh

test-unit:
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $$($(GO) list ./... | grep -v /tests/e2e)

test-e2e: build
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./tests/e2e/...

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

clean:
	rm -rf bin
