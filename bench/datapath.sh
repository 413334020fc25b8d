#!/usr/bin/env bash
# Data-path smoke benchmark (ports mode, no root): the weft proxy pair beside
# a direct connection to the same echo server. Prints one table.
#   bash bench/datapath.sh [seconds]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-5}"
source "$repo/bench/args.sh"
need_count "seconds" "$secs" "bash bench/datapath.sh [seconds]"
source "$repo/bench/ports-mesh.sh"
# Warm the destination and policy caches.
"$bin/tcp_load" rr --addr "127.0.0.1:$fe_out" --connections 1 --seconds 1 >/dev/null
"$bin/tcp_load" http --addr "127.0.0.1:$fe_http" --connections 1 --seconds 1 >/dev/null

kv() { echo "$1" | tr ' ' '\n' | grep "^$2=" | cut -d= -f2; }
printf '%-8s %12s %9s %9s %10s %12s %12s %9s %9s\n' path "rr req/s" "p50 ms" "p99 ms" "bulk MB/s" "new conn/s" "http req/s" "p50 ms" "p99 ms"
for path in direct weft; do
  if [ $path = direct ]; then addr="127.0.0.1:$echo_port"; haddr="127.0.0.1:$http_port"; else addr="127.0.0.1:$fe_out"; haddr="127.0.0.1:$fe_http"; fi
  rr=$("$bin/tcp_load" rr --addr "$addr" --connections 16 --seconds "$secs")
  bulk=$("$bin/tcp_load" bulk --addr "$addr" --megabytes 512)
  cps=$("$bin/tcp_load" connect --addr "$addr" --concurrency 16 --seconds "$secs")
  http=$("$bin/tcp_load" http --addr "$haddr" --connections 16 --seconds "$secs")
  printf '%-8s %12s %9s %9s %10s %12s %12s %9s %9s\n' $path "$(kv "$rr" rps)" "$(kv "$rr" p50_ms)" "$(kv "$rr" p99_ms)" "$(kv "$bulk" mb_s)" "$(kv "$cps" cps)" "$(kv "$http" rps)" "$(kv "$http" p50_ms)" "$(kv "$http" p99_ms)"
done
echo
printf 'peak RSS: frontend proxy %s kB, backend proxy %s kB\n' "$(awk '/VmHWM/{print $2}' /proc/$fe/status)" "$(awk '/VmHWM/{print $2}' /proc/$be/status)"
