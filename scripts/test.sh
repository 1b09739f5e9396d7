#!/usr/bin/env bash
# The whole test suite, as `make test` and CI run it.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== go vet"
go vet ./...
echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [[ -n "$unformatted" ]]; then echo "gofmt: these files need formatting:"; echo "$unformatted"; exit 1; fi
echo "== unit and integration tests (-race)"
go test -race -count=1 -timeout "${TEST_TIMEOUT:-20m}" $(go list ./... | grep -v /tests/e2e)
echo "== failpoints (-tags failpoints: the crash points of the robustness scenarios)"
go vet -tags failpoints ./internal/failpoint/
go test -race -count=1 -tags failpoints ./internal/failpoint/
echo "== fuzz targets (${FUZZTIME:-4s} each)"
FUZZTIME="${FUZZTIME:-4s}" bash scripts/fuzz.sh
echo "== e2e tests (real binaries; the robustness scenarios once each, short: make robustness runs them longer, in a loop)"
make --no-print-directory build
go test -count=1 -timeout "${TEST_TIMEOUT:-20m}" ./tests/e2e/...
