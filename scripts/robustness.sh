#!/usr/bin/env bash
# The fault scenarios of tests/e2e/robust_test.go in a loop (make
# robustness). Each scenario runs ROBUST_RUNS times; each run injects
# ROBUST_FAULTS faults and checks the invariants afterwards. At the end, a
# table per scenario: runs, faults injected, results and tasks checked,
# invariant violations.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${ROBUST_RUNS:-3}
report=$(mktemp)
log=$(mktemp)
trap 'rm -f "$report"' EXIT
echo "== failpoint package (-tags failpoints)"
go test -race -count=1 -tags failpoints ./internal/failpoint/ || exit 1
echo "== robustness: ${runs} runs of each scenario, ${ROBUST_FAULTS:-1} faults per run," \
  "partitions of ${ROBUST_PARTITION:-12s}, SIGSTOP for ${ROBUST_STOP:-17s} (log: $log)"
ROBUST_REPORT=$report go test -count="$runs" -timeout "${ROBUST_TIMEOUT:-90m}" -run '^TestRobust' -v ./tests/e2e/ 2>&1 |
  tee "$log" | grep -E --line-buffered '^(=== RUN|--- |\s+robust_.*(fault|violation|faults injected))|^(ok|FAIL|panic)'
status=${PIPESTATUS[0]}
echo
awk -F'\t' '
  { n[$1]++; f[$1]+=$2; r[$1]+=$3; t[$1]+=$4; v[$1]+=$5; x[$1]+=$6; e[$1]+=$7; ms[$1]+=$8 }
  END {
    printf "%-34s %5s %7s %10s %8s %10s %6s %10s %9s\n", "scenario", "runs", "faults", "results", "tasks", "violations", "execs", "escalated", "avg run"
    for (s in n) printf "%-34s %5d %7d %10d %8d %10d %6d %10d %8.1fs\n", s, n[s], f[s], r[s], t[s], v[s], x[s], e[s], ms[s]/n[s]/1000 | "sort"
  }' "$report"
total=$(awk -F'\t' '{v+=$5} END {print v+0}' "$report")
echo "invariant violations in all: $total"
if [[ $status -ne 0 ]]; then
  echo "robustness: some scenario failed (see $log)"
  exit 1
fi
rm -f "$log"
[[ $total -eq 0 ]]
