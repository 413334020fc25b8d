# Sourced by datapath.sh and idle.sh: a control plane and two weft proxies on
# 127.0.0.1 (ports mode, no root). The frontend's outbound listener $fe_out
# leads over mTLS to the backend's inbound and an echo server ($fe_http to an
# HTTP server). Builds weft and the load tools in release mode, works in a
# scratch directory removed on exit with every process it started. Needs
# $repo; PROXY_FLAGS are added to both proxies. Sets bin, work, fe, be
# (PIDs), fe_out, fe_http, echo_port, http_port.
cargo build --quiet --release --manifest-path "$repo/Cargo.toml" -p weft -p bench
bin="$repo/target/release"
# WEFT_BIN runs another weft build (an A/B); the load tools stay this repository's.
weft="${WEFT_BIN:-$bin/weft}"
[[ -x $weft ]] || { echo "WEFT_BIN=$weft is not an executable weft binary" >&2; exit 2; }
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"
free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_line() { for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "timeout waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1; }

"$weft" certs create root.linkerd.cluster.local ca.crt ca.key --profile root-ca >/dev/null
"$weft" certs create identity.linkerd.cluster.local issuer.crt issuer.key --profile intermediate-ca --ca ca.crt --ca-key ca.key >/dev/null
echo_port=$(free); fe_in=$(free); be_in=$(free); fe_out=$(free); http_port=$(free); fe_http=$(free)
"$bin/tcp_load" echo --listen "127.0.0.1:$echo_port" > echo.log & pids+=($!)
"$bin/tcp_load" http-serve --listen "127.0.0.1:$http_port" > http.log & pids+=($!)
mkdir resources
for w in "frontend 9 $fe_in" "backend $echo_port $be_in"; do
  set -- $w
  cat >> resources/bench.yaml <<YAML
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata:
  name: $1
  namespace: bench
  annotations:
    config.linkerd.io/inbound-port: "$3"
spec:
  meshTLS:
    identity: $1.bench.serviceaccount.identity.weft.cluster.local
    serverName: $1.bench.serviceaccount.identity.weft.cluster.local
  workloadIPs:
  - ip: 127.0.0.1
  ports:
  - port: $2
$( [ "$1" = backend ] && echo "  - port: $http_port" )
---
YAML
done
WEFT_LOG=warn "$weft" control-plane --identity-trust-anchors-file ca.crt --identity-issuer-certificate-file issuer.crt \
  --identity-issuer-key-file issuer.key --state-dir state --resources resources --identity-addr 127.0.0.1:0 \
  --destination-addr 127.0.0.1:0 --policy-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 2> cp.log & pids+=($!)
wait_line cp.log "destination listening on"
ia=$(grep "identity listening on" cp.log | awk '{print $NF}')
da=$(grep "destination listening on" cp.log | awk '{print $NF}')
pa=$(grep "policy listening on" cp.log | awk '{print $NF}')
for w in frontend backend; do "$weft" token create -n bench --service-account $w --state-dir state --out $w.token 2>/dev/null; done
WEFT_LOG=warn "$weft" proxy --workload bench/backend --token-file backend.token --trust-anchors-file ca.crt \
  --identity-addr "$ia" --destination-addr "$da" --policy-addr "$pa" --inbound-addr "127.0.0.1:$be_in" --admin-addr 127.0.0.1:0 --tap-addr 127.0.0.1:0 --outbound-addr off ${PROXY_FLAGS:-} 2> be.log & be=$!; pids+=($be)
WEFT_LOG=warn "$weft" proxy --workload bench/frontend --token-file frontend.token --trust-anchors-file ca.crt \
  --identity-addr "$ia" --destination-addr "$da" --policy-addr "$pa" --inbound-addr "127.0.0.1:$fe_in" --admin-addr 127.0.0.1:0 --tap-addr 127.0.0.1:0 --outbound-addr off \
  --outbound "127.0.0.1:$fe_out=bench/backend:$echo_port" --outbound "127.0.0.1:$fe_http=bench/backend:$http_port" ${PROXY_FLAGS:-} 2> fe.log & fe=$!; pids+=($fe)
wait_line be.log "admin listening on"; wait_line fe.log "admin listening on"
for log in be.log fe.log; do
  admin=$(grep "admin listening on" $log | awk '{print $NF}')
  for _ in $(seq 200); do curl -sf "http://$admin/ready" >/dev/null && break; sleep 0.05; done
done
