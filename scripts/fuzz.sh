#!/usr/bin/env bash
# Runs every Go fuzz target of the module for a fixed time each (FUZZTIME,
# default 10s) and fails if any finds a crasher. Targets are found, not
# listed: every package with a `func Fuzz` in a _test.go file is asked for
# its targets with `go test -list '^Fuzz'`.
#
# A crasher is written by Go to <package>/testdata/fuzz/<Target>/<id>: fix
# the bug and keep the file, so that `go test` runs it as a regression
# seed from then on. Re-run one with
#   go test -run '<Target>/<id>' ./<package>
#
#   FUZZTIME=30s scripts/fuzz.sh            # longer
#   FUZZ_PARALLEL=2 scripts/fuzz.sh         # fuzzing workers per target (default 1)
#   scripts/fuzz.sh ./internal/policy/      # only these packages
set -euo pipefail
cd "$(dirname "$0")/.."

fuzztime=${FUZZTIME:-10s}
parallel=${FUZZ_PARALLEL:-1}

if (($# > 0)); then
	pkgs=("$@")
else
	mapfile -t pkgs < <(grep -rl --include='*_test.go' -E '^func Fuzz[A-Z0-9_]' . |
		grep -v '/testdata/' | xargs -r -n1 dirname | sort -u | sed 's|^\./||; s|^|./|')
fi

log=$(mktemp "${TMPDIR:-/tmp}/tend-fuzz.XXXXXX")
trap 'rm -f "$log"' EXIT
start=$SECONDS
ran=0
flaked=0
failed=()
for pkg in "${pkgs[@]}"; do
	if ! go test -list '^Fuzz' "$pkg" >"$log" 2>&1; then
		cat "$log"
		failed+=("$pkg (does not build)")
		continue
	fi
	mapfile -t targets < <(grep -E '^Fuzz' "$log" || true)
	for target in "${targets[@]}"; do
		echo "-- fuzz $pkg $target ($fuzztime)"
		ran=$((ran + 1))
		corpus="$pkg/testdata/fuzz/$target"
		before=$(ls -1 "$corpus" 2>/dev/null | sort || true)
		if go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" -parallel "$parallel" "$pkg" >"$log" 2>&1; then
			grep -E '^fuzz: elapsed' "$log" | tail -n 1 || true
			continue
		fi
		after=$(ls -1 "$corpus" 2>/dev/null | sort || true)
		new=$(comm -13 <(echo "$before") <(echo "$after") | sed '/^$/d')
		if [[ -z "$new" ]] && grep -q '^    context deadline exceeded$' "$log" && ! grep -q 'Failing input written' "$log"; then
			# Go's fuzz coordinator can report its own -fuzztime deadline as
			# a failure when a worker is still busy (golang/go#75804, fixed
			# in Go 1.27): no input failed, nothing was written.
			grep -E '^fuzz: elapsed' "$log" | tail -n 1 || true
			echo "   (stopped by the Go 1.26 fuzztime race golang/go#75804: no failing input; not a crash)"
			flaked=$((flaked + 1))
			continue
		fi
		cat "$log"
		if [[ -n "$new" ]]; then
			echo "crasher(s) written to $corpus: $new"
		fi
		failed+=("$pkg $target")
	done
done

echo "fuzz: $ran targets, $fuzztime each, $((SECONDS - start)) s in all ($flaked stopped by golang/go#75804)"
if ((ran == 0)); then
	echo "fuzz: no fuzz targets found" >&2
	exit 1
fi
if ((${#failed[@]} > 0)); then
	echo "fuzz: FAILED: ${failed[*]}" >&2
	echo "fuzz: crashers are in <package>/testdata/fuzz/<Target>/: fix the bug and keep them as regression seeds" >&2
	exit 1
fi
