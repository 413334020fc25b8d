#!/usr/bin/env bash
# Certify throughput: the control plane pinned to one core (taskset -c 0), the
# load generator on the other. Prints a table; numbers go in BENCHMARKS.md.
# Capacity, not policy: the Certify rate limits (6/m per client, 200/s in all
# by default) are lifted, as every request here uses one join token.
#   bash bench/certify.sh [seconds] [concurrency]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-10}"
conc="${2:-64}"
source "$repo/bench/args.sh"
need_count "seconds" "$secs" "bash bench/certify.sh [seconds] [concurrency]"
need_count "concurrency" "$conc" "bash bench/certify.sh [seconds] [concurrency]"
cargo build --quiet --release --manifest-path "$repo/Cargo.toml" -p weft -p bench
bin="$repo/target/release"
work="$(mktemp -d)"
cleanup() { [ -n "${cp:-}" ] && kill "$cp" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"
# The issuer files in a directory of their own, as a mounted Secret is: the
# control plane watches their directory, and its log is written here.
mkdir pki
"$bin/weft" certs create root.linkerd.cluster.local pki/ca.crt pki/ca.key --profile root-ca >/dev/null
"$bin/weft" certs create identity.linkerd.cluster.local pki/issuer.crt pki/issuer.key --profile intermediate-ca --ca pki/ca.crt --ca-key pki/ca.key >/dev/null
WEFT_LOG=${WEFT_LOG:-info} taskset -c 0 "$bin/weft" control-plane --identity-trust-anchors-file pki/ca.crt \
  --identity-issuer-certificate-file pki/issuer.crt --identity-issuer-key-file pki/issuer.key \
  --certify-rate-per-client 1000000/s:1000000 --certify-rate-global 1000000/s:1000000 \
  --state-dir state --identity-addr 127.0.0.1:0 --destination-addr 127.0.0.1:0 --policy-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 2>cp.log &
cp=$!
for _ in $(seq 100); do grep -q "identity listening on" cp.log 2>/dev/null && break; sleep 0.1; done
addr=$(grep "identity listening on" cp.log | awk '{print $NF}')
admin=$(grep "admin listening on" cp.log | awk '{print $NF}')
for _ in $(seq 100); do curl -sf "http://$admin/ready" >/dev/null && break; sleep 0.1; done
# The control plane made the token key in its state directory.
"$bin/weft" token create -n demo --service-account web --ttl 1h --state-dir state --out token

cpu_ticks() { awk '{print $14 + $15}' "/proc/$cp/stat"; }
hz=$(getconf CLK_TCK)
printf '%-12s %6s %9s %9s %9s %8s %12s\n' mode clients "req/s" "p50 ms" "p99 ms" errors "req/cpu-s"
# new: weft's default handshake (X25519MLKEM768, AES-256-GCM); new-classic: the
# peers' (X25519, AES-128-GCM), as peer-bench.sh's weft-classic.
for mode in new new-classic reuse; do
  flags=(--mode "${mode%-classic}")
  [ "$mode" = new-classic ] && flags+=(--tls-key-exchange X25519 --tls-cipher-suites TLS_AES_128_GCM_SHA256)
  t0=$(cpu_ticks)
  out=$(taskset -c 1 "$bin/certify_load" --addr "$addr" --anchors pki/ca.crt --token-file token \
        --concurrency "$conc" --seconds "$secs" "${flags[@]}")
  t1=$(cpu_ticks)
  eval "$(echo "$out" | tr ' ' '\n' | sed 's/^/r_/')"
  cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" 'BEGIN{print (b-a)/hz}')
  per=$(awk -v ok="$r_ok" -v c="$cpu" 'BEGIN{ if (c>0) printf "%.0f", ok/c; else print "n/a"}')
  printf '%-12s %6s %9s %9s %9s %8s %12s\n' "$mode" "$conc" "$r_rate" "$r_p50_ms" "$r_p99_ms" "$r_errors" "$per"
done
