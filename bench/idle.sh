#!/usr/bin/env bash
# Memory of idle connections (ports mode; root only to raise the open-file
# limit): N app connections to the frontend proxy's outbound listener, each
# through to the echo server after one 64-byte exchange (so N mTLS
# connections into the backend proxy, and N to the app), then held idle.
# Prints each proxy's RSS and private memory (RssAnon) before, with the N
# connections open and after they closed, and the growth per connection.
#   bash bench/idle.sh [N ...]        (default: 1000 10000)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
counts=("${@:-1000 10000}")
read -r -a counts <<< "${counts[*]}"
source "$repo/bench/args.sh"
for n in "${counts[@]}"; do need_count "a connection count" "$n" "bash bench/idle.sh [N ...]"; done
max=0; for n in "${counts[@]}"; do (( n > max )) && max=$n; done
# Each forwarded connection holds two descriptors in a proxy; the load tool one.
want=$(( 2 * max + 4096 ))
if (( $(ulimit -Hn) < want )) && ! ulimit -Hn "$want" 2>/dev/null; then
  echo "$max connections need an open-file limit of $want; the hard limit is $(ulimit -Hn) and cannot be raised here (CAP_SYS_RESOURCE): at most $(( ($(ulimit -Hn) - 4096) / 2 ))" >&2
  exit 1
fi
ulimit -n "$want"
PROXY_FLAGS="--inbound-max-connections $(( max + 64 )) --outbound-max-connections $(( max + 64 ))"
source "$repo/bench/ports-mesh.sh"
"$bin/tcp_load" rr --addr "127.0.0.1:$fe_out" --connections 1 --seconds 1 >/dev/null

kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
inbound_open() {
  local admin; admin=$(grep "admin listening on" be.log | awk '{print $NF}')
  curl -s "http://$admin/metrics" | awk '/^listener_connections_open\{listener="inbound"\}/ {s += $NF} END {print s + 0}'
}
printf '%7s %-9s %12s %12s %12s %13s %13s\n' conns proxy "RSS before" "RSS open" "RSS after" "per conn RSS" "per conn anon"
for n in "${counts[@]}"; do
  declare -A before_rss before_anon
  for p in fe be; do before_rss[$p]=$(kib "${!p}" VmRSS); before_anon[$p]=$(kib "${!p}" RssAnon); done
  "$bin/tcp_load" idle --addr "127.0.0.1:$fe_out" --connections "$n" --seconds 600 > idle.out & load=$!
  for _ in $(seq 1200); do grep -q "open=" idle.out 2>/dev/null && break; sleep 0.1; done
  opened=$(grep -o "open=[0-9]*" idle.out | cut -d= -f2)
  sleep 1
  declare -A open_rss open_anon
  for p in fe be; do open_rss[$p]=$(kib "${!p}" VmRSS); open_anon[$p]=$(kib "${!p}" RssAnon); done
  kill "$load"; wait "$load" 2>/dev/null || true
  for _ in $(seq 300); do [ "$(inbound_open)" = 0 ] && break; sleep 0.1; done
  for p in fe be; do
    name=$([ $p = fe ] && echo "outbound" || echo "inbound")
    after=$(kib "${!p}" VmRSS)
    printf '%7s %-9s %9s KiB %9s KiB %9s KiB %9.2f KiB %9.2f KiB\n' "$opened/$n" "$name" "${before_rss[$p]}" "${open_rss[$p]}" "$after" \
      "$(awk -v a="${before_rss[$p]}" -v b="${open_rss[$p]}" -v n="$opened" 'BEGIN{print (b-a)/n}')" \
      "$(awk -v a="${before_anon[$p]}" -v b="${open_anon[$p]}" -v n="$opened" 'BEGIN{print (b-a)/n}')"
  done
done
