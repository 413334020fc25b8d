# Plug-in mode for peer-bench.sh: weft (ports mode) as the mTLS proxy pair.
#   bench/peer-bench.sh direct haproxy nginx-stream stunnel weft
# (peer-bench.sh builds this repository's weft in release mode first; WEFT_BIN overrides.)
#
# Per mode run (all under $MODEDIR/weft, all on $HOST):
#   - a fresh root + issuer made with `weft certs create` (weft's own PKI: the proxies get their
#     leaf certificates from the control plane, so the harness's openssl PKI is not used);
#   - ExternalWorkloads bench/backend (declares BACKEND_PORT, inbound-port = IN_PORT) and
#     bench/frontend (a dummy port; its own inbound on WEFT_FE_IN_PORT, unused);
#   - `weft control-plane` on ephemeral ports (role "controlplane", unpinned, stopped by stop_all);
#   - join tokens, then two `weft proxy` processes:
#       inbound  = bench/backend, --inbound-addr IN_LISTEN   -> app at 127.0.0.1:BACKEND_PORT
#       outbound = bench/frontend, --outbound OUT_LISTEN=bench/backend:BACKEND_PORT
#     each waits for /ready (certificate issued) before returning; the outbound also warms
#     discovery with one request.
# Knobs (env, read at call time):
#   WEFT_BIN      the weft binary (default: the repo's target/release/weft, built by peer-bench.sh)
#   WEFT_WORKERS  worker threads per proxy (WEFT_PROXY_WORKERS, and TOKIO_WORKER_THREADS for the control plane); default $PROXY_THREADS;
#                 "default" = one per CPU (nproc).
#   WEFT_OPAQUE   1 (default): BACKEND_PORT is in config.linkerd.io/opaque-ports, so the inbound
#                 forwards bytes (L4, like the haproxy/nginx/stunnel peers); 0: weft's default for
#                 a non-opaque port: the inbound detects HTTP/1 and judges every request (hyper).
#   WEFT_LOG      proxy/control-plane log level (default warn)
#   WEFT_FE_IN_PORT  the frontend proxy's own inbound port (default 14153)
#   WEFT_TLS_ARGS  extra TLS flags for both proxies (mode weft-classic: the peers' suite and X25519)
# TLS: weft is TLS 1.3 with rustls/aws-lc-rs defaults (X25519MLKEM768 first, AES-256-GCM first)
# unless WEFT_TLS_ARGS says otherwise; the peers' pinned TLS13_CIPHERS applies only through it.
: "${WEFT_BIN:?set WEFT_BIN to the weft binary (peer-bench.sh sets it to target/release/weft of this repository)}"

weft_wait_line() { # file pattern [tries of 0.05s]; the line must be complete (weft's stderr is
  local i           # unbuffered, so a line can be seen half-written)
  for ((i = 0; i < ${3:-200}; i++)); do
    grep -q "$2" "$1" 2>/dev/null && [[ -z $(tail -c1 "$1") ]] && return 0; sleep 0.05
  done
  log "weft: timeout waiting for '$2' in $1"; return 1
}
weft_wait_ready() { # admin-addr
  local i
  for ((i = 0; i < 200; i++)); do curl -sf --max-time 1 "http://$1/ready" >/dev/null && return 0; sleep 0.05; done
  log "weft: $1/ready never became true"; return 1
}
weft_env() { # prints env assignments for a proxy/control plane
  local w=${WEFT_WORKERS:-$PROXY_THREADS}
  echo "WEFT_LOG=${WEFT_LOG:-warn}"
  # the proxy's threads (weft proxy --workers); the control plane's tokio runtime
  if [[ $w == default ]]; then echo "WEFT_PROXY_WORKERS=$(nproc)"; else echo "WEFT_PROXY_WORKERS=$w"; echo "TOKIO_WORKER_THREADS=$w"; fi
}

mode_weft_inbound() {
  local d=$MODEDIR/weft; mkdir -p "$d/resources"
  local fe_in=${WEFT_FE_IN_PORT:-14153}
  local opaque=""; [[ ${WEFT_OPAQUE:-1} == 1 ]] && opaque="    config.linkerd.io/opaque-ports: \"$BACKEND_PORT\""
  "$WEFT_BIN" certs create root.linkerd.cluster.local "$d/ca.crt" "$d/ca.key" --profile root-ca >/dev/null
  "$WEFT_BIN" certs create identity.linkerd.cluster.local "$d/issuer.crt" "$d/issuer.key" \
      --profile intermediate-ca --ca "$d/ca.crt" --ca-key "$d/ca.key" >/dev/null
  cat > "$d/resources/bench.yaml" <<EOF
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata:
  name: backend
  namespace: bench
  annotations:
    config.linkerd.io/inbound-port: "$IN_PORT"
$opaque
spec:
  meshTLS:
    identity: backend.bench.serviceaccount.identity.weft.cluster.local
    serverName: backend.bench.serviceaccount.identity.weft.cluster.local
  workloadIPs:
  - ip: $HOST
  ports:
  - port: $BACKEND_PORT
---
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata:
  name: frontend
  namespace: bench
  annotations:
    config.linkerd.io/inbound-port: "$fe_in"
spec:
  meshTLS:
    identity: frontend.bench.serviceaccount.identity.weft.cluster.local
    serverName: frontend.bench.serviceaccount.identity.weft.cluster.local
  workloadIPs:
  - ip: $HOST
  ports:
  - port: 9
EOF
  # the control plane: its own role, so it is tracked, bounded by timeout and stopped by stop_all
  launch controlplane env $(weft_env) "$WEFT_BIN" control-plane \
    --identity-trust-anchors-file "$d/ca.crt" --identity-issuer-certificate-file "$d/issuer.crt" \
    --identity-issuer-key-file "$d/issuer.key" --state-dir "$d/state" --resources "$d/resources" \
    --identity-addr "$HOST:0" --destination-addr "$HOST:0" --policy-addr "$HOST:0" --admin-addr "$HOST:0"
  weft_wait_line "$MODEDIR/controlplane.log" "admin listening on" || return 1
  local cpl=$MODEDIR/controlplane.log
  WEFT_IA=$(awk '/identity listening on/{print $NF; exit}' "$cpl")
  WEFT_DA=$(awk '/destination listening on/{print $NF; exit}' "$cpl")
  WEFT_PA=$(awk '/policy listening on/{print $NF; exit}' "$cpl")
  WEFT_CP_ADMIN=$(awk '/admin listening on/{print $NF; exit}' "$cpl")
  weft_wait_ready "$WEFT_CP_ADMIN" || return 1
  local sa
  for sa in frontend backend; do
    "$WEFT_BIN" token create -n bench --service-account "$sa" --state-dir "$d/state" --out "$d/$sa.token" --force >/dev/null 2>&1 \
      || { log "weft: token create $sa failed"; return 1; }
  done
  launch inbound env $(weft_env) "$WEFT_BIN" proxy --workload bench/backend --token-file "$d/backend.token" \
    --trust-anchors-file "$d/ca.crt" --identity-addr "$WEFT_IA" --destination-addr "$WEFT_DA" --policy-addr "$WEFT_PA" \
    --inbound-addr "$IN_LISTEN" --admin-addr "$HOST:0" --tap-addr "$HOST:0" --outbound-addr off --shutdown-grace-period 1s ${WEFT_TLS_ARGS:-}
  weft_wait_line "$MODEDIR/inbound.log" "admin listening on" || return 1
  WEFT_IN_ADMIN=$(awk '/admin listening on/{print $NF; exit}' "$MODEDIR/inbound.log")
  weft_wait_ready "$WEFT_IN_ADMIN"
}

mode_weft_outbound() {
  local d=$MODEDIR/weft fe_in=${WEFT_FE_IN_PORT:-14153}
  launch outbound env $(weft_env) "$WEFT_BIN" proxy --workload bench/frontend --token-file "$d/frontend.token" \
    --trust-anchors-file "$d/ca.crt" --identity-addr "$WEFT_IA" --destination-addr "$WEFT_DA" --policy-addr "$WEFT_PA" \
    --inbound-addr "$HOST:$fe_in" --admin-addr "$HOST:0" --tap-addr "$HOST:0" --outbound-addr off --shutdown-grace-period 1s \
    --outbound "$OUT_LISTEN=bench/backend:$BACKEND_PORT" ${WEFT_TLS_ARGS:-}
  weft_wait_line "$MODEDIR/outbound.log" "admin listening on" || return 1
  WEFT_OUT_ADMIN=$(awk '/admin listening on/{print $NF; exit}' "$MODEDIR/outbound.log")
  weft_wait_ready "$WEFT_OUT_ADMIN" || return 1
  curl -s -o /dev/null --max-time 5 "http://$OUT_LISTEN/"   # warm discovery + policy caches
  # record thread counts (checks TOKIO_WORKER_THREADS took effect)
  local r p
  for r in outbound inbound; do p=${PID_OF[$r]:-}
    [[ -n $p ]] && echo "$r pid=$p threads=$(ls "/proc/$p/task" 2>/dev/null | wc -l) names=$(cat /proc/"$p"/task/*/comm 2>/dev/null | sort | uniq -c | tr -s ' \n' ' ')" >> "$MODEDIR/checks.txt"
  done
}

# weft's inbound wants mTLS *and* the Linkerd transport header (ALPN transport.l5d.io/v1), so the
# generic curl probe cannot get a 200 from it. Instead: plaintext and TLS-without-client-cert must
# not get through, and the inbound proxy's own metrics must show the smoke-test connection as
# tls="true" with the frontend's identity.
mode_weft_mtls_check() {
  local be_id=backend.bench.serviceaccount.identity.weft.cluster.local
  local fe_id=frontend.bench.serviceaccount.identity.weft.cluster.local
  local plain nocert proto meshed
  plain=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://$IN_LISTEN/")
  nocert=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 3 --resolve "$be_id:$IN_PORT:$HOST" "https://$be_id:$IN_PORT/")
  proto=$(timeout 5 openssl s_client -brief -connect "$IN_LISTEN" -servername "$be_id" -CAfile "$MODEDIR/weft/ca.crt" \
      </dev/null 2>&1 | awk -F': ' '/Protocol version|Ciphersuite|Verification:|Negotiated TLS1.3 group|Server Temp Key/{printf "%s ", $2}')
  meshed=$(curl -s --max-time 3 "http://$WEFT_IN_ADMIN/metrics" | awk -v id="$fe_id" \
      '/^tcp_open_total/ && /direction="inbound"/ && /tls="true"/ && index($0, "client_id=\"" id "\"") {s+=$NF} END{print s+0}')
  echo "inbound probe: plaintext=$plain tls-without-cert=$nocert; openssl(no cert): $proto; inbound tcp_open_total{tls=true,client_id=frontend}=$meshed" >> "$MODEDIR/checks.txt"
  curl -s --max-time 3 "http://$WEFT_IN_ADMIN/metrics" | grep -E '^(tcp_open_total|tcp_refused_total)' >> "$MODEDIR/checks.txt"
  if [[ $plain != 200 && $nocert != 200 && $meshed -ge 1 ]]; then echo ok
  else echo "FAIL(plain=$plain,nocert=$nocert,meshed=$meshed)"; fi
}

# mTLS connections the inbound proxy accepted so far (its tcp_open_total, inbound, tls="true"):
# phase (d) divides their growth by the requests made, so pooling shows as < 1 per request.
mode_weft_mtls_accepted() {
  curl -s --max-time 3 "http://$WEFT_IN_ADMIN/metrics" \
    | awk '/^tcp_open_total/ && /direction="inbound"/ && /tls="true"/ {s+=$NF} END{print s+0}'
}
