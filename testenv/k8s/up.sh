#!/usr/bin/env bash
# Start the test control plane as plain background processes: etcd + kube-apiserver (fresh certs), then
# kube-controller-manager, kube-scheduler and kwok with one fake node 'kwok-node-0' (pods get scheduled, become
# Running with an IP from K8S_POD_CIDR; Deployments, EndpointSlices, default ServiceAccounts, kube-root-ca.crt,
# namespace deletion and GC all work). Waits until /readyz, the node is Ready and default/default exists.
# stdout: 'export VAR=...' lines (so a shell can: eval "$(testenv/k8s/up.sh)"); human notes go to stderr.
# Also writes them to $K8S_RUN_DIR/env. Stop with down.sh (K8S_RUN_DIR set, or pass the dir as $1).
# Run it inside a network namespace (ip netns exec NS up.sh) to keep everything off the host's interfaces;
# that is what crates/testbed/src/k8s.rs does (with the bed's cp pod as the node and the bed's subnet as pods).
#   K8S_BIN_DIR   binaries from build.sh (same default as build.sh)
#   K8S_RUN_DIR   state dir (default: new mktemp dir under ${TMPDIR:-/tmp})
#   K8S_API_PORT / K8S_ETCD_PORT / K8S_ETCD_PEER_PORT  (default: free ports picked at run time)
#   K8S_BIND_ADDRESS       kube-apiserver --bind-address (default 127.0.0.1; etcd is always on 127.0.0.1)
#   K8S_ADVERTISE_ADDRESS  kube-apiserver --advertise-address, also a serving-cert SAN (default 127.0.0.1)
#   K8S_NODE_IP    the fake node's InternalIP (default: the advertise address)
#   K8S_POD_CIDR   the fake node's spec.podCIDR and kwok's --cidr: pod IPs are taken from it in order
#                  (default 10.244.0.0/16: FAKE addresses, nothing listens there unless you make stand-ins;
#                  EndpointSlice validation rejects 127.0.0.0/8, so never a loopback range)
#   K8S_READY_TIMEOUT  seconds to wait for /readyz (default 120)
#   K8S_APISERVER_EXTRA_FLAGS  extra kube-apiserver flags (word-split)
#   K8S_KUBELET_PORT  kwok serves the kubelet API (port-forward) on 0.0.0.0:PORT, the node's kubeletEndpoint
#                  (default: a free port). The API server reaches it at the node's InternalIP (no verification of
#                  kwok's self-signed serving cert: no --kubelet-certificate-authority). kwok forwards a pod's port
#                  where a PortForward object (kwok.x-k8s.io/v1alpha1, named after the pod) says; none: refused.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/versions.env"
K8S_BIN_DIR=${K8S_BIN_DIR:-$WEFT_K8S_CACHE/bin/$K8S_BIN_KEY}
for b in kube-apiserver etcd kube-controller-manager kube-scheduler kwok kwok-stages.yaml; do
  [ -e "$K8S_BIN_DIR/$b" ] || { echo "up.sh: $K8S_BIN_DIR/$b missing; run $HERE/build.sh" >&2; exit 1; }
done
grep -q '^kind: Stage' "$K8S_BIN_DIR/kwok-stages.yaml" \
  || { echo "up.sh: $K8S_BIN_DIR/kwok-stages.yaml has no kwok Stage; rerun K8S_FORCE_BUILD=1 $HERE/build.sh" >&2; exit 1; }
for t in openssl curl; do command -v $t >/dev/null || { echo "up.sh: needs $t" >&2; exit 1; }; done
BIND=${K8S_BIND_ADDRESS:-127.0.0.1}
ADVERTISE=${K8S_ADVERTISE_ADDRESS:-127.0.0.1}
NODE_IP=${K8S_NODE_IP:-$ADVERTISE}
POD_CIDR=${K8S_POD_CIDR:-10.244.0.0/16}
K8S_RUN_DIR=${K8S_RUN_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/k8s-run.XXXXXX")}
mkdir -p "$K8S_RUN_DIR"; R=$K8S_RUN_DIR; chmod 700 "$R"
for c in etcd apiserver; do   # never start a second control plane over a live one
  if [ -f "$R/$c.pid" ] && kill -0 "$(cat "$R/$c.pid")" 2>/dev/null; then
    echo "up.sh: $R already has a running $c (pid $(cat "$R/$c.pid")); run down.sh or unset K8S_RUN_DIR" >&2; exit 1; fi
done
log() { echo "up.sh: $*" >&2; }
# on any failure, stop what this script started (by PID) and keep the dir for its logs
on_fail() { set +e   # (under set -e a failed kill of an already-dead process would end the cleanup early)
  for c in kwok scheduler controller-manager apiserver etcd; do
    if [ -f "$R/$c.pid" ]; then kill "$(cat "$R/$c.pid")" 2>/dev/null || true; fi; done
  echo "up.sh: FAILED; stopped what it started; logs kept in $R" >&2; }
trap 'rc=$?; [ $rc = 0 ] || on_fail' EXIT

free_port() {
  if command -v python3 >/dev/null; then
    python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
  else # fallback: random high port not currently listened on
    local p; while :; do p=$((20000 + RANDOM % 20000)); (echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo $p; return; }; done
  fi
}
API_PORT=${K8S_API_PORT:-$(free_port)}
ETCD_PORT=${K8S_ETCD_PORT:-$(free_port)}
ETCD_PEER_PORT=${K8S_ETCD_PEER_PORT:-$(free_port)}
CM_PORT=${K8S_CONTROLLER_MANAGER_PORT:-$(free_port)}
SCHED_PORT=${K8S_SCHEDULER_PORT:-$(free_port)}
KUBELET_PORT=${K8S_KUBELET_PORT:-$(free_port)}
# every check below talks to loopback: never through a proxy from the environment
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

# ---- PKI: one CA; apiserver serving cert (IP SAN 127.0.0.1); admin client cert; SA signing key; static token
P="$R/pki"; mkdir -p "$P"
(
  cd "$P"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=k8s-test-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  cat > serving.ext <<X
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$ADVERTISE,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
X
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 3650 -extfile serving.ext 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > client.ext
  openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=kubernetes-admin" 2>/dev/null
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 3650 -extfile client.ext 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  rm -f ./*.csr
)
TOKEN=$(openssl rand -hex 24)
echo "$TOKEN,kubernetes-admin,kubernetes-admin,system:masters" > "$P/tokens.csv"

# ---- etcd
log "starting etcd on 127.0.0.1:$ETCD_PORT"
setsid nohup "$K8S_BIN_DIR/etcd" --name=default --data-dir="$R/etcd-data" \
  --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="default=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state=new \
  --unsafe-no-fsync=true --quota-backend-bytes=$((2*1024*1024*1024)) --log-level=warn \
  >"$R/etcd.log" 2>&1 < /dev/null &
echo $! > "$R/etcd.pid"
T0=$SECONDS
until curl -fsS "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'; do
  kill -0 "$(cat "$R/etcd.pid")" 2>/dev/null || { log "etcd died:"; tail -20 "$R/etcd.log" >&2; exit 1; }
  [ $((SECONDS - T0)) -lt 60 ] || { log "etcd not healthy after 60s"; tail -20 "$R/etcd.log" >&2; exit 1; }
  sleep 0.2
done
log "etcd healthy after $((SECONDS - T0))s"

# ---- kube-apiserver
log "starting kube-apiserver on https://127.0.0.1:$API_PORT"
# shellcheck disable=SC2086
setsid nohup "$K8S_BIN_DIR/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address="$BIND" --advertise-address="$ADVERTISE" --secure-port="$API_PORT" \
  --cert-dir="$R/apiserver-certs" \
  --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
  --client-ca-file="$P/ca.crt" --token-auth-file="$P/tokens.csv" \
  --authorization-mode=Node,RBAC \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
  --service-cluster-ip-range=10.96.0.0/16 \
  --kubelet-preferred-address-types=InternalIP \
  --endpoint-reconciler-type=none \
  --allow-privileged=true \
  --profiling=false \
  ${K8S_APISERVER_EXTRA_FLAGS:-} \
  >"$R/apiserver.log" 2>&1 < /dev/null &
echo $! > "$R/apiserver.pid"

T1=$SECONDS; TIMEOUT=${K8S_READY_TIMEOUT:-120}
until [ "$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$P/ca.crt" -H "Authorization: Bearer $TOKEN" \
          "https://127.0.0.1:$API_PORT/readyz" 2>/dev/null)" = 200 ]; do
  kill -0 "$(cat "$R/apiserver.pid")" 2>/dev/null || { log "kube-apiserver died:"; tail -30 "$R/apiserver.log" >&2; exit 1; }
  [ $((SECONDS - T1)) -lt "$TIMEOUT" ] || { log "not ready after ${TIMEOUT}s"; tail -30 "$R/apiserver.log" >&2; exit 1; }
  sleep 0.5
done
# 'default' namespace is created by an in-apiserver controller right after readiness
until curl -fsS -o /dev/null --cacert "$P/ca.crt" -H "Authorization: Bearer $TOKEN" \
        "https://127.0.0.1:$API_PORT/api/v1/namespaces/default" 2>/dev/null; do
  [ $((SECONDS - T1)) -lt "$TIMEOUT" ] || { log "no default namespace after ${TIMEOUT}s"; exit 1; }
  sleep 0.5
done
log "kube-apiserver ready after $((SECONDS - T1))s (etcd+apiserver total $((SECONDS - T0))s)"

# ---- kubeconfig: context 'test' uses the static token (simplest for kube-rs); 'test-cert' uses the admin client cert
b64() { base64 -w0 < "$1"; }
cat > "$R/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(b64 "$P/ca.crt")
users:
- name: admin-token
  user:
    token: $TOKEN
- name: admin-cert
  user:
    client-certificate-data: $(b64 "$P/admin.crt")
    client-key-data: $(b64 "$P/admin.key")
contexts:
- name: test
  context: {cluster: test, user: admin-token}
- name: test-cert
  context: {cluster: test, user: admin-cert}
current-context: test
KC
chmod 600 "$R/kubeconfig"

KC="$R/kubeconfig"
# kwok's PortForward CRD, served before kwok starts watching it
curl -fsS -o /dev/null --cacert "$P/ca.crt" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/yaml' \
  -X POST --data-binary @"$HERE/kwok-crd-portforwards.yaml" \
  "https://127.0.0.1:$API_PORT/apis/apiextensions.k8s.io/v1/customresourcedefinitions" \
  || { log "cannot create kwok's PortForward CRD"; exit 1; }
T3=$SECONDS
until curl -fsS -o /dev/null --cacert "$P/ca.crt" -H "Authorization: Bearer $TOKEN" \
        "https://127.0.0.1:$API_PORT/apis/kwok.x-k8s.io/v1alpha1/portforwards" 2>/dev/null; do
  [ $((SECONDS - T3)) -lt 60 ] || { log "kwok's PortForward CRD not served after 60s"; exit 1; }
  sleep 0.2
done
log "starting kube-controller-manager, kube-scheduler, kwok (node IP $NODE_IP, pod CIDR $POD_CIDR)"
setsid nohup "$K8S_BIN_DIR/kube-controller-manager" --kubeconfig="$KC" \
  --authentication-kubeconfig="$KC" --authorization-kubeconfig="$KC" \
  --bind-address=127.0.0.1 --secure-port="$CM_PORT" --leader-elect=false \
  --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" --use-service-account-credentials=true \
  --cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
  --service-cluster-ip-range=10.96.0.0/16 \
  >"$R/controller-manager.log" 2>&1 < /dev/null &
echo $! > "$R/controller-manager.pid"
setsid nohup "$K8S_BIN_DIR/kube-scheduler" --kubeconfig="$KC" \
  --authentication-kubeconfig="$KC" --authorization-kubeconfig="$KC" \
  --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --leader-elect=false \
  >"$R/scheduler.log" 2>&1 < /dev/null &
echo $! > "$R/scheduler.pid"
# kwok takes pod IPs from the node's spec.podCIDR (else --cidr), in order from the range's first address + 1
# (plus weft's readiness stage: pods annotated weft.test/readiness=external wait for the test to make them Ready)
setsid nohup "$K8S_BIN_DIR/kwok" --kubeconfig="$KC" --config="$K8S_BIN_DIR/kwok-stages.yaml" \
  --config="$HERE/kwok-stages-readiness.yaml" \
  --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --node-ip="$NODE_IP" --cidr="$POD_CIDR" --node-lease-duration-seconds=40 \
  --node-port="$KUBELET_PORT" --enable-crds=PortForward \
  >"$R/kwok.log" 2>&1 < /dev/null &
echo $! > "$R/kwok.pid"
cat > "$R/node.json" <<N
{"apiVersion":"v1","kind":"Node","metadata":{"name":"kwok-node-0",
 "annotations":{"node.alpha.kubernetes.io/ttl":"0","kwok.x-k8s.io/node":"fake"},
 "labels":{"kubernetes.io/hostname":"kwok-node-0","kubernetes.io/os":"linux","kubernetes.io/arch":"amd64","type":"kwok"}},
 "spec":{"podCIDR":"$POD_CIDR","podCIDRs":["$POD_CIDR"]}}
N
curl -fsS -o /dev/null --cacert "$P/ca.crt" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -X POST --data @"$R/node.json" "https://127.0.0.1:$API_PORT/api/v1/nodes" || { log "cannot create fake node"; exit 1; }
T2=$SECONDS
# (-A: the apiserver pretty-prints JSON for a user agent starting with 'curl'; we want it compact)
until curl -fsS -A up.sh --cacert "$P/ca.crt" -H "Authorization: Bearer $TOKEN" \
        "https://127.0.0.1:$API_PORT/api/v1/nodes/kwok-node-0" 2>/dev/null | grep -q '"type":"Ready","status":"True"'; do
  for c in controller-manager scheduler kwok; do
    kill -0 "$(cat "$R/$c.pid")" 2>/dev/null || { log "$c died:"; tail -20 "$R/$c.log" >&2; exit 1; }
  done
  [ $((SECONDS - T2)) -lt 60 ] || { log "fake node not Ready after 60s"; tail -20 "$R/kwok.log" >&2; exit 1; }
  sleep 0.5
done
# controller-manager is useful once its ServiceAccount controller has made default/default
until curl -fsS -o /dev/null --cacert "$P/ca.crt" -H "Authorization: Bearer $TOKEN" \
        "https://127.0.0.1:$API_PORT/api/v1/namespaces/default/serviceaccounts/default" 2>/dev/null; do
  [ $((SECONDS - T2)) -lt 60 ] || { log "controller-manager made no default ServiceAccount after 60s"; exit 1; }
  sleep 0.5
done
log "fake node kwok-node-0 Ready, controllers up after $((SECONDS - T2))s (total $((SECONDS - T0))s)"

cat > "$R/env" <<ENV
export K8S_RUN_DIR=$R
export KUBECONFIG=$R/kubeconfig
export K8S_API_URL=https://127.0.0.1:$API_PORT
export K8S_CA_FILE=$P/ca.crt
export K8S_CA_KEY_FILE=$P/ca.key
export K8S_TOKEN=$TOKEN
export K8S_APISERVER_PID=$(cat "$R/apiserver.pid")
export K8S_ETCD_PID=$(cat "$R/etcd.pid")
export K8S_ETCD_URL=http://127.0.0.1:$ETCD_PORT
export K8S_POD_CIDR=$POD_CIDR
export K8S_KUBELET_PORT=$KUBELET_PORT
ENV
log "kubeconfig: $R/kubeconfig   pids: apiserver=$(cat "$R/apiserver.pid") etcd=$(cat "$R/etcd.pid")   logs: $R/*.log"
log "stop with: K8S_RUN_DIR=$R $HERE/down.sh"
cat "$R/env"
