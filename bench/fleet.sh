#!/usr/bin/env bash
# Control-plane scale: N simulated proxies attached (mTLS; the weft.mesh.v1
# stream, one Destination.Get and one WatchPort each), the control plane
# pinned to one core (taskset -c 0), the load tool on the other. Prints the
# control plane's RSS per attached proxy, how long a new trust bundle and a
# policy change take to reach all N, and the pace of a fleet-wide renew-now.
#   bash bench/fleet.sh [proxies ...]      (default: 1000 10000)
# CONNS=1 (default): each proxy holds one connection, policy on the
# destination address (a weft proxy's default); CONNS=2: a second connection
# to the policy address (Linkerd's layout). The control plane's connection cap
# per listener is raised to N + 64 (--grpc-max-connections), as an operator
# of such a fleet would. RENEW_SECONDS (default 20): how long the renew-now
# phase waits for every proxy to be asked.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
sizes=("${@:-1000 10000}")
# shellcheck disable=SC2206
sizes=(${sizes[*]})
source "$repo/bench/args.sh"
for n in "${sizes[@]}"; do need_count "a proxy count" "$n" "bash bench/fleet.sh [proxies ...]"; done
cargo build --quiet --release --manifest-path "$repo/Cargo.toml" -p weft -p bench
bin="$repo/target/release"
# One or two sockets per simulated proxy on each side.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"

# The control plane and scratch directory of the size being run: stopped and
# removed when it ends, and on exit if a step fails on the way.
cp=; work=
cleanup() { [[ -n $cp ]] && kill "$cp" 2>/dev/null; [[ -n $work ]] && rm -rf "$work"; cp=; work=; }
trap cleanup EXIT

run() {
  local n=$1
  work="$(mktemp -d)"
  trap cleanup RETURN
  cd "$work"
  "$bin/weft" certs create root.linkerd.cluster.local ca.crt ca.key --profile root-ca >/dev/null
  "$bin/weft" certs create identity.linkerd.cluster.local issuer.crt issuer.key --profile intermediate-ca --ca ca.crt --ca-key ca.key >/dev/null
  mkdir resources
  cat > resources/workloads.yaml <<'YAML'
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata:
  name: backend
  namespace: demo
  labels:
    app: backend
  annotations:
    config.linkerd.io/inbound-port: "4143"
spec:
  meshTLS:
    identity: backend.demo.serviceaccount.identity.weft.cluster.local
    serverName: backend.demo.serviceaccount.identity.weft.cluster.local
  workloadIPs:
  - ip: 127.0.0.1
  ports:
  - port: 8080
YAML
  cat > resources/policy.yaml <<'YAML'
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata:
  name: backend-server
  namespace: demo
spec:
  podSelector:
    matchLabels:
      app: backend
  port: 8080
YAML
  WEFT_LOG=warn taskset -c 0 "$bin/weft" control-plane --identity-trust-anchors-file ca.crt \
    --identity-issuer-certificate-file issuer.crt --identity-issuer-key-file issuer.key \
    --state-dir state --resources resources --reread-interval 1s \
    --identity-addr 127.0.0.1:0 --destination-addr 127.0.0.1:0 --policy-addr 127.0.0.1:0 \
    --admin-addr 127.0.0.1:0 --grpc-max-connections $((n + 64)) 2>cp.log &
  cp=$!
  for _ in $(seq 100); do grep -q "admin listening on" cp.log 2>/dev/null && break; sleep 0.1; done
  addr() { grep "$1 listening on" cp.log | awk '{print $NF}'; }
  for _ in $(seq 100); do curl -sf "http://$(addr admin)/ready" >/dev/null && break; sleep 0.1; done
  # The control plane made the token key in its state directory.
  "$bin/weft" token create -n demo --service-account backend --ttl 1h --state-dir state --out token
  local t0 t1 hz
  hz=$(getconf CLK_TCK)
  local policy
  policy=$(addr destination)
  [[ ${CONNS:-1} == 2 ]] && policy=$(addr policy)
  t0=$(awk '{print $14 + $15}' "/proc/$cp/stat")
  taskset -c 1 "$bin/fleet_load" --proxies "$n" --port 8080 \
    --identity-addr "$(addr identity)" --destination-addr "$(addr destination)" \
    --policy-addr "$policy" --admin-addr "$(addr admin)" \
    --anchors ca.crt --token-file token --policy-file resources/policy.yaml --cp-pid "$cp" \
    --renew-seconds "${RENEW_SECONDS:-20}" > load.out
  t1=$(awk '{print $14 + $15}' "/proc/$cp/stat")
  echo "cp_cpu_s=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" 'BEGIN{printf "%.1f", (b-a)/hz}')" >> load.out
  cat load.out
  cd "$repo"
}

for n in "${sizes[@]}"; do
  echo "== $n simulated proxies, ${CONNS:-1} connection(s) each (load $(cut -d' ' -f1-3 /proc/loadavg))"
  run "$n"
done
