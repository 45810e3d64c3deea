#!/usr/bin/env bash
# make soak: the network faults and load tests of integration/reliability,
# in their long form on every link and frontend, round after round for
# DURATION; then each fuzz target for SOAK_FUZZTIME. Prints the table of
# faults (what was checked, the result), the bounds (flag, default), the
# load (goroutines, descriptors, RSS before, at peak, after) and the fuzz
# executions. The whole go test log is kept in bin/soak.log, the tables in
# bin/soak-table.md and bin/soak-fuzz.txt. Exits non-zero if any run
# failed.
#
# Usage: DURATION=10m hack/soak.sh MODULE...
set -uo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10m}
SOAK_FUZZTIME=${SOAK_FUZZTIME:-30s}
SOAK_TIMEOUT=${SOAK_TIMEOUT:-48h}
GO=${GO:-go}
bin=$PWD/bin
mkdir -p "$bin"
rm -f "$bin/soak-table.md" "$bin/soak-fuzz.txt"

echo "soak: faults and load for $DURATION (a round that started runs to its end), then every fuzz target for $SOAK_FUZZTIME"
echo "      progress below; the whole log goes to bin/soak.log"
(cd integration && ISTHMUS_SOAK=$DURATION ISTHMUS_SOAK_TABLE=$bin/soak-table.md \
	"$GO" test -race -count=1 -run '^TestSoak$' -timeout "$SOAK_TIMEOUT" -v ./reliability/) >"$bin/soak.log" 2>&1 &
pid=$!
# Progress: the rounds and each scenario's row as it ends.
tail -n +1 --pid=$pid -f "$bin/soak.log" | grep --line-buffered -E 'soak round|row: |^--- FAIL|^(FAIL|ok) |^panic' | cut -c1-240
wait $pid
rc=$?

FUZZTIME=$SOAK_FUZZTIME GO="$GO" hack/fuzz.sh "$@" >"$bin/soak-fuzz.txt" 2>&1
frc=$?

if [ -s "$bin/soak-table.md" ]; then
	cat "$bin/soak-table.md"
else
	echo "soak: no table was written (the run ended before its end: see bin/soak.log)"
	tail -50 "$bin/soak.log"
fi
echo
sed -n '/^fuzz target/,$p' "$bin/soak-fuzz.txt"
[ $frc -eq 0 ] || grep -E 'FAIL|Failing input' "$bin/soak-fuzz.txt" | head -20
echo
echo "soak: faults and load $([ $rc -eq 0 ] && echo passed || echo FAILED), fuzzing $([ $frc -eq 0 ] && echo passed || echo FAILED); logs: bin/soak.log, bin/soak-fuzz.txt"
[ $rc -eq 0 ] && [ $frc -eq 0 ]
