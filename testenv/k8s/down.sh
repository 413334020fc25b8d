#!/usr/bin/env bash
# Stop the processes started by up.sh (kwok, scheduler, controller-manager, apiserver, etcd; by PID only) and
# remove its run dir. All get TERM at once (each takes 1.5-3 s to exit; one after the other took 10 s);
# whatever still runs after 10 s gets KILL.
#   usage: down.sh [RUN_DIR]     (or K8S_RUN_DIR in the environment)
#   K8S_KEEP_RUN_DIR=1  keep the dir (logs, certs) for debugging
set -uo pipefail
R=${1:-${K8S_RUN_DIR:-}}
[ -n "$R" ] && [ -d "$R" ] || { echo "down.sh: give the run dir (arg or K8S_RUN_DIR)" >&2; exit 1; }
[ -f "$R/etcd.pid" ] || [ -f "$R/env" ] || [ -d "$R/pki" ] || { echo "down.sh: $R is not an up.sh run dir" >&2; exit 1; }
pids=()
for c in kwok scheduler controller-manager apiserver etcd; do
  f="$R/$c.pid"; [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null && pids+=("$pid"); fi
  rm -f "$f"
done
for _ in $(seq 1 100); do
  alive=()
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
  [ ${#alive[@]} -eq 0 ] && break
  sleep 0.1
done
for pid in "${pids[@]}"; do
  kill -0 "$pid" 2>/dev/null && { echo "down.sh: $pid did not stop on TERM; KILL" >&2; kill -KILL "$pid" 2>/dev/null; }
done
if [ "${K8S_KEEP_RUN_DIR:-0}" = 1 ]; then echo "down.sh: stopped; kept $R" >&2
else rm -rf "$R"; echo "down.sh: stopped; removed $R" >&2; fi
