#!/usr/bin/env bash
# Runs every fuzz target of the given modules for FUZZTIME each (go test
# -fuzz, one target at a time: go test fuzzes one per run), then prints a
# table: target, package, executions, result. The targets are found in the
# code: every `func FuzzX(f *testing.F)` in a _test.go file.
#
# A failing input is written by go test to the package's
# testdata/fuzz/<target>/ (keep it: it then runs with every go test) and
# fails the run. Go 1.26's fuzzing coordinator can end a run that found
# nothing with "context deadline exceeded" at the deadline (a race of its
# own, golang/go#75804, fixed in Go 1.27): with no input written, that run
# is reported as such and does not fail.
#
# Usage: FUZZTIME=10s hack/fuzz.sh MODULE...
set -uo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-10s}
GO=${GO:-go}
[ $# -gt 0 ] || { echo "usage: FUZZTIME=10s $0 MODULE..." >&2; exit 2; }

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
rows=()
failed=0
start=$SECONDS
while IFS=: read -r file name; do
	dir=$(dirname "$file")
	mod=${dir%%/*}
	rel=.${dir#"$mod"}
	corpus=$dir/testdata/fuzz/$name
	before=$(ls "$corpus" 2>/dev/null | sort)
	log=$logs/${dir//\//_}.$name.log
	echo "=== fuzz $name ($dir) for $FUZZTIME"
	t0=$SECONDS
	(cd "$mod" && "$GO" test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "$rel") >"$log" 2>&1
	rc=$?
	execs=$(grep -o 'execs: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
	new=$(comm -13 <(echo "$before") <(ls "$corpus" 2>/dev/null | sort) | sed "s|^|$corpus/|")
	if [ $rc -eq 0 ]; then
		result=ok
	elif [ -z "$new" ] && grep -q '^    context deadline exceeded$' "$log" && ! grep -q 'Failing input' "$log"; then
		result="ok (golang/go#75804 at the deadline; no input failed)"
	else
		result="FAIL${new:+: $new}"
		failed=1
		cat "$log"
	fi
	echo "    $name: ${execs:-0} executions in $((SECONDS - t0)) s (build included): $result"
	rows+=("$(printf '%-22s %-28s %12s  %s' "$name" "$dir" "${execs:-0}" "$result")")
done < <(grep -rHoE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' "$@" |
	sed -E 's/:func (Fuzz[A-Za-z0-9_]*)\(.*/:\1/' | sort)

echo
printf '%-22s %-28s %12s  %s\n' "fuzz target" "package" "executions" "result (each run $FUZZTIME)"
printf '%s\n' "${rows[@]}"
echo "fuzzing took $((SECONDS - start)) s"
exit $failed
