#!/usr/bin/env bash
# Long fuzzing runs: fuzz/run-long.sh TARGET|all HOURS [JOBS]
# Runs each named target for HOURS of wall time (all: HOURS shared among the targets, JOBS of them
# at once, default 1), with new inputs kept in fuzz/corpus-long/TARGET (not committed; merge the
# useful ones with `cargo +nightly fuzz cmin`). Prints the CPU-hours used and every finding
# (crash-/leak-/timeout-/oom- files in fuzz/artifacts/TARGET/), and exits 1 if there was one.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 2 ]; then
  echo "usage: fuzz/run-long.sh TARGET|all HOURS [JOBS]   (targets: $(cargo +nightly fuzz list --fuzz-dir fuzz | tr '\n' ' '))" >&2
  exit 2
fi
which=$1 hours=$2 jobs=${3:-1}
export CARGO_INCREMENTAL=0
TARGET_DIR=$PWD/target/fuzz
if [ "$which" = all ]; then
  targets=$(cargo +nightly fuzz list --fuzz-dir fuzz)
else
  targets=$which
fi
n=$(echo "$targets" | wc -w)
# Wall seconds per target: all targets share HOURS, JOBS at a time.
secs=$(awk -v h="$hours" -v n="$n" -v j="$jobs" 'BEGIN { s = h * 3600 * (j < n ? j : n) / n; printf "%d", (s < 1 ? 1 : s) }')
cargo +nightly fuzz build --fuzz-dir fuzz --target-dir "$TARGET_DIR" >/dev/null
mkdir -p fuzz/logs
before=$(find fuzz/artifacts -type f 2>/dev/null | sort || true)

run_one() {
  local t=$1
  mkdir -p "fuzz/corpus-long/$t"
  # bash's `time` reports the CPU time of the fuzzer process itself.
  { TIMEFORMAT="cpu $t %U %S"; time cargo +nightly fuzz run --fuzz-dir fuzz --target-dir "$TARGET_DIR" \
      "$t" "fuzz/corpus-long/$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -timeout=10 \
      -print_final_stats=1 >"fuzz/logs/$t.log" 2>&1 || echo "finding $t (exit $?)"; } 2>&1
}
export -f run_one
export TARGET_DIR secs
echo "fuzzing $n target(s), ${secs}s each, $jobs at a time (logs: fuzz/logs/)"
out=$(echo "$targets" | tr ' ' '\n' | xargs -P "$jobs" -I{} bash -c 'run_one {}')
echo "$out" | grep -v '^cpu ' || true

cpu=$(echo "$out" | awk '/^cpu /{ s += $3 + $4 } END { printf "%.3f", s / 3600 }')
for t in $targets; do
  runs=$(grep -h '^stat::number_of_executed_units' "fuzz/logs/$t.log" | awk '{print $2}')
  cov=$(grep -h 'cov:' "fuzz/logs/$t.log" | tail -1 | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
  echo "$t: ${runs:-?} runs, ${cov:-?} edges, $(ls "fuzz/corpus-long/$t" | wc -l) inputs in fuzz/corpus-long/$t"
done
echo "CPU-hours: $cpu"
after=$(find fuzz/artifacts -type f 2>/dev/null | sort || true)
found=$(comm -13 <(echo "$before") <(echo "$after") | sed '/^$/d')
if [ -n "$found" ]; then
  echo "findings:"
  echo "$found"
  exit 1
fi
echo "findings: none"
