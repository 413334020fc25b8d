#!/usr/bin/env bash
# peer-bench.sh — loopback benchmark of an mTLS sidecar-proxy pair
#
#   client (wrk/curl) --plain--> OUTBOUND proxy --mTLS 1.3--> INBOUND proxy --plain--> backend (nginx)
#
# usage: bench/peer-bench.sh [MODE ...]    (default: all built-in modes)
#   built-in modes: direct haproxy-plain stunnel haproxy nginx-stream
#   plug-in modes : custom (OUTBOUND_CMD / INBOUND_CMD env), or any NAME for which
#                   $BENCH_DIR/modes/NAME.sh exists: weft (L4, opaque port), weft-http
#                   (HTTP detected on both sides, per-request policy), weft-mt (tokio default workers),
#                   weft-classic (L4 with the peers' handshake: AES-128-GCM, X25519)
#   "all"         : direct haproxy-plain stunnel haproxy nginx-stream
#   e.g.  bench/peer-bench.sh direct haproxy nginx-stream weft weft-http
#         PRESET=full  bench/peer-bench.sh ...   (5 interleaved rounds: the run BENCHMARKS.md reports)
#         PRESET=smoke bench/peer-bench.sh ...   (1 round, short phases: proves the harness works)
#
# Tools: haproxy, nginx (+ libnginx-mod-stream), stunnel4, wrk, curl, openssl are installed with
# apt-get when missing (as root).  weft modes use the repo's own weft: unless WEFT_BIN is set,
# `cargo build --release -p weft` runs in this repository first and target/release/weft is used.
#
# Modes are run ROUNDS times, interleaved (A B C A B C ...) so slow drift of this
# noisy shared VM hits every mode equally; a summary with medians and ratios vs
# "direct" is printed at the end.  Every process we start is wrapped in
# `timeout PROC_MAX_S` and is also stopped by PID on exit, so nothing outlives us.
#
# Knobs (env):
#   ROUNDS=2  WRK_THREADS=2 WRK_CONNS=16 WRK_DURATION=10  (keep-alive load, seconds)
#   C1_DURATION=5            (1 connection, 1 thread: unloaded per-request latency; 0=skip)
#   CONN_DURATION=10 CONN_CONNS=16   ("Connection: close" => one TCP+mTLS handshake per request)
#   HTTPNEW_DURATION=10 HTTPNEW_CONNS=16  (HTTP phase, a new app connection per request, `Connection:
#                            close`, counting the mTLS connections the inbound accepted for them:
#                            an L4 pair handshakes once per app connection; an HTTP-aware pair that
#                            pools its mTLS connections does not. 0=skip)
#   PRESET=                  full: ROUNDS=5.  smoke: ROUNDS=1 and 2-3 s phases, 1 bulk rep.
#   WEFT_BIN= WEFT_PROFILE=release   the weft binary; unset: built from this repo in that profile
#   BULK_REPS=3 BULK_MB=100  (single-stream curl download of a BULK_MB file through the chain)
#   FIXED_RATE=0             (req/s; >0 and `oha` found => open-loop latency run at that rate)
#   FIXED_DURATION=10
#   WARMUP=2                 (seconds of unrecorded keep-alive load before measuring)
#   PIN=none|pods|split      none: no affinity.  pods: cpu0 = client+outbound, cpu1 = inbound+backend
#                            split: cpu0 = client, cpu1 = outbound+inbound+backend
#     or set CPU_CLIENT CPU_OUT CPU_IN CPU_BACKEND yourself (taskset -c lists)
#   PROXY_THREADS=1          worker threads/processes for proxies that have the knob
#   TLS13_CIPHERS=TLS_AES_128_GCM_SHA256   (pinned so every peer uses the same AEAD)
#   TLS_RESUME=0             0: outbound side never resumes sessions => every new conn is a full
#                            ECDSA mTLS handshake (what a fresh-connection test should measure)
#   BACKEND_PORT=18080 IN_PORT=14143 OUT_PORT=14140   HOST=127.0.0.1
#   WORK=/tmp/peer-bench     scratch dir (certs, 100MB file, configs, logs, results)
#   RESULTS=$WORK/results.tsv  (appended; one row per mode run)
#   PROC_MAX_S=300           hard lifetime of any started daemon (per mode run)
#   NICE=                    e.g. -10: renice the harness (and so every child) above foreign load
#   MTLS_CHECK=1             probe the inbound port with/without a client cert before measuring
#
# Plug-in contract (how to drop in the new project's proxy):
#   Define functions mode_<name>_inbound and mode_<name>_outbound (dashes in <name> become
#   underscores).  Each must start ONE foreground process with
#        launch inbound  CMD ARGS...      /   launch outbound CMD ARGS...
#   and return.  Available variables: OUT_LISTEN (host:port to listen on, plaintext),
#   IN_LISTEN (host:port the inbound listens on, mTLS), IN_ADDR (= IN_LISTEN, what outbound
#   dials), BACKEND_ADDR (host:port plaintext app), CERTS (see gen-certs.sh outputs),
#   SERVER_ID / CLIENT_ID (DNS identities), SERVER_SPIFFE / CLIENT_SPIFFE, PROXY_THREADS,
#   TLS13_CIPHERS, TLS_RESUME, MODEDIR (scratch dir for this mode run).
#   Optional: launch further roles (e.g. a control plane: `launch controlplane CMD...`, unpinned);
#   stop_all stops them too.  Optional mode_<name>_mtls_check: echo "ok" or "FAIL(...)" to replace
#   the generic curl/openssl probe (for proxies whose inbound needs more than a client cert).
#   $MODEDIR/rss.txt gets idle VmRSS and RssAnon (after the smoke test) and end-of-run VmRSS/VmHWM of both proxies.
#   Quick version without a file:
#     OUTBOUND_CMD='./target/release/px outbound --listen $OUT_LISTEN --connect $IN_ADDR ...' \
#     INBOUND_CMD='./target/release/px inbound --listen $IN_LISTEN --forward $BACKEND_ADDR ...' \
#     ./peer-bench.sh direct custom
set -uo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
WORK=${WORK:-${TMPDIR:-/tmp}/peer-bench}
case ${PRESET:-} in
  "") : ;;
  full)  ROUNDS=${ROUNDS:-5} ;;
  smoke) ROUNDS=${ROUNDS:-1}; WRK_DURATION=${WRK_DURATION:-3}; C1_DURATION=${C1_DURATION:-2}
         CONN_DURATION=${CONN_DURATION:-3}; HTTPNEW_DURATION=${HTTPNEW_DURATION:-3}
         BULK_REPS=${BULK_REPS:-1}; WARMUP=${WARMUP:-1} ;;
  *) echo "unknown PRESET=$PRESET (full or smoke)" >&2; exit 2 ;;
esac
ROUNDS=${ROUNDS:-2}
WRK_THREADS=${WRK_THREADS:-2}; WRK_CONNS=${WRK_CONNS:-16}; WRK_DURATION=${WRK_DURATION:-10}
C1_DURATION=${C1_DURATION:-5}
CONN_DURATION=${CONN_DURATION:-10}; CONN_CONNS=${CONN_CONNS:-16}
HTTPNEW_DURATION=${HTTPNEW_DURATION:-10}; HTTPNEW_CONNS=${HTTPNEW_CONNS:-16}
BULK_REPS=${BULK_REPS:-3}; BULK_MB=${BULK_MB:-100}
FIXED_RATE=${FIXED_RATE:-0}; FIXED_DURATION=${FIXED_DURATION:-10}
WARMUP=${WARMUP:-2}
PIN=${PIN:-none}
PROXY_THREADS=${PROXY_THREADS:-1}
TLS13_CIPHERS=${TLS13_CIPHERS:-TLS_AES_128_GCM_SHA256}
TLS_RESUME=${TLS_RESUME:-0}
HOST=${HOST:-127.0.0.1}
BACKEND_PORT=${BACKEND_PORT:-18080}; IN_PORT=${IN_PORT:-14143}; OUT_PORT=${OUT_PORT:-14140}
PROC_MAX_S=${PROC_MAX_S:-300}
MTLS_CHECK=${MTLS_CHECK:-1}
RESULTS=${RESULTS:-$WORK/results.tsv}
OHA=${OHA:-$(command -v oha || echo "$BENCH_DIR/tools/bin/oha")}
[[ -x $OHA ]] || OHA=""

case $PIN in
  none)  : ;;
  pods)  CPU_CLIENT=${CPU_CLIENT:-0}; CPU_OUT=${CPU_OUT:-0}; CPU_IN=${CPU_IN:-1}; CPU_BACKEND=${CPU_BACKEND:-1} ;;
  split) CPU_CLIENT=${CPU_CLIENT:-0}; CPU_OUT=${CPU_OUT:-1}; CPU_IN=${CPU_IN:-1}; CPU_BACKEND=${CPU_BACKEND:-1} ;;
  *) echo "unknown PIN=$PIN" >&2; exit 2 ;;
esac
CPU_CLIENT=${CPU_CLIENT:-}; CPU_OUT=${CPU_OUT:-}; CPU_IN=${CPU_IN:-}; CPU_BACKEND=${CPU_BACKEND:-}
LAYOUT="pin=${PIN}(cl:${CPU_CLIENT:-*},out:${CPU_OUT:-*},in:${CPU_IN:-*},be:${CPU_BACKEND:-*})"

CERTS=$WORK/certs
OUT_LISTEN=$HOST:$OUT_PORT; IN_LISTEN=$HOST:$IN_PORT; IN_ADDR=$IN_LISTEN; BACKEND_ADDR=$HOST:$BACKEND_PORT
TICK=$(getconf CLK_TCK)
SMALL_BODY="hello from backend"

declare -A PID_OF TPID
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# ------------------------------------------------------------------ process control
cpu_for() { case $1 in client) echo "$CPU_CLIENT";; outbound) echo "$CPU_OUT";; inbound) echo "$CPU_IN";; backend) echo "$CPU_BACKEND";; esac; }
pin() { local c; c=$(cpu_for "$1"); shift; if [[ -n $c ]]; then taskset -c "$c" "$@"; else "$@"; fi; }

# launch ROLE CMD ARGS... : start a foreground daemon, bounded by timeout, remember its PID
launch() {
  local role=$1; shift
  local cpu; cpu=$(cpu_for "$role")
  if [[ -n $cpu ]]; then
    taskset -c "$cpu" timeout -k 3 "$PROC_MAX_S" "$@" >"$MODEDIR/$role.log" 2>&1 &
  else
    timeout -k 3 "$PROC_MAX_S" "$@" >"$MODEDIR/$role.log" 2>&1 &
  fi
  TPID[$role]=$!
  local c="" i
  for i in $(seq 50); do
    c=$(ps -o pid= --ppid "${TPID[$role]}" 2>/dev/null | head -1 | tr -d ' ')
    [[ -n $c ]] && break; sleep 0.05
  done
  PID_OF[$role]=${c:-${TPID[$role]}}
}

stop_role() {
  local role=$1 p=${PID_OF[$1]:-} t=${TPID[$1]:-} i
  [[ -z $t ]] && return 0
  local tree=""; [[ -n $p ]] && tree=$(tree_pids "$p")   # our daemon + any children it forked
  [[ -n $tree ]] && kill -TERM $tree 2>/dev/null
  for i in $(seq 30); do kill -0 "$t" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$t" 2>/dev/null; then [[ -n $tree ]] && kill -KILL $tree 2>/dev/null; kill -KILL "$t" 2>/dev/null; fi
  wait "$t" 2>/dev/null
  unset "PID_OF[$role]" "TPID[$role]"
}
stop_all() { local r; for r in outbound inbound backend "${!TPID[@]}"; do stop_role "$r"; done; }   # + extra roles a plug-in launched (e.g. a control plane)
trap 'stop_all' EXIT
trap 'stop_all; exit 130' INT TERM

wait_listen() { # port [timeout_s]
  local i n=$(( ${2:-10} * 10 ))
  for ((i = 0; i < n; i++)); do
    ss -ltnH "( sport = :$1 )" 2>/dev/null | grep -q . && return 0
    sleep 0.1
  done
  return 1
}

tree_pids() { local k; echo "$1"; for k in $(ps -o pid= --ppid "$1" 2>/dev/null); do tree_pids "$k"; done; }
cpu_ticks() { # role -> utime+stime ticks of the process tree
  local p=${PID_OF[$1]:-} q s=0 v
  [[ -z $p ]] && { echo 0; return; }
  for q in $(tree_pids "$p"); do
    v=$(sed 's/^.*) //' "/proc/$q/stat" 2>/dev/null | awk '{print $12+$13+$14+$15}')   # utime+stime+cutime+cstime (reaped fork-per-conn children count too)
    s=$(( s + ${v:-0} ))
  done
  echo "$s"
}
status_kb() { local p=${PID_OF[$1]:-} q s=0 v   # a /proc/PID/status field (kB) summed over the process tree
  [[ -z $p ]] && { echo 0; return; }
  for q in $(tree_pids "$p"); do
    v=$(awk -v f="$2:" '$1==f{print $2}' "/proc/$q/status" 2>/dev/null); s=$(( s + ${v:-0} ))
  done; echo "$s"; }
rss_kb() { status_kb "$1" VmRSS; }    # resident now
hwm_kb() { status_kb "$1" VmHWM; }    # peak resident
# resident private memory (heap, stacks): RSS less the mapped pages of the binary and libraries,
# which are shared with every process running the same files
anon_kb() { status_kb "$1" RssAnon; }
mb() { awk -v k="$1" 'BEGIN{printf "%.1f",k/1024}'; }
sysstat() { awk '/^cpu /{t=0; for(i=2;i<=NF;i++) t+=$i; print t, $5+$6, $9}' /proc/stat; }

# phase accounting: snap_begin; ...; snap_end  => sets P_OUT P_IN P_BE (cpu seconds), P_BUSY P_STEAL (% of all cpus)
snap_begin() { S0_OUT=$(cpu_ticks outbound); S0_IN=$(cpu_ticks inbound); S0_BE=$(cpu_ticks backend); S0_SYS=$(sysstat); }
snap_end() {
  local o i b; o=$(cpu_ticks outbound); i=$(cpu_ticks inbound); b=$(cpu_ticks backend)
  P_OUT=$(awk -v a="$S0_OUT" -v b="$o" -v t="$TICK" 'BEGIN{printf "%.2f",(b-a)/t}')
  P_IN=$(awk -v a="$S0_IN" -v b="$i" -v t="$TICK" 'BEGIN{printf "%.2f",(b-a)/t}')
  P_BE=$(awk -v a="$S0_BE" -v b="$b" -v t="$TICK" 'BEGIN{printf "%.2f",(b-a)/t}')
  read -r P_BUSY P_STEAL < <(echo "$S0_SYS $(sysstat)" | awk '{dt=$4-$1; di=$5-$2; ds=$6-$3; if(dt<=0)dt=1; printf "%.0f %.1f\n", 100*(dt-di)/dt, 100*ds/dt}')
}

# ------------------------------------------------------------------ parsing helpers
to_us() { awk -v v="$1" 'BEGIN{ if(v==""){print "";exit} n=v; sub(/[a-z]+$/,"",n); u=v; sub(/^[0-9.]+/,"",u);
  m=(u=="us")?1:(u=="ms")?1000:(u=="s")?1e6:(u=="m")?6e7:1; printf "%.0f", n*m }'; }
parse_wrk() { # file -> W_P50 W_P90 W_P99 W_RPS W_REQS W_ERRS
  local f=$1
  W_P50=$(to_us "$(awk '$1=="50%"{print $2}' "$f")")
  W_P90=$(to_us "$(awk '$1=="90%"{print $2}' "$f")")
  W_P99=$(to_us "$(awk '$1=="99%"{print $2}' "$f")")
  W_RPS=$(awk '/^Requests\/sec:/{printf "%.0f",$2}' "$f")
  W_REQS=$(awk '/requests in/{print $1}' "$f")
  W_ERRS=$(awk '/Socket errors/{gsub(/,/,""); s+=$4+$6+$8+$10} /Non-2xx/{s+=$NF} END{print s+0}' "$f")
}
timed() { # outfile-for-cpu cmd... ; runs cmd pinned to client cpu, records user+sys seconds
  local tf=$1; shift
  pin client /usr/bin/time -f '%U %S' -o "$tf" "$@"
}
client_cpu() { awk 'END{printf "%.2f",$1+$2}' "$1" 2>/dev/null; }

# ------------------------------------------------------------------ fixtures
ensure_tools() { # installs what the built-in modes need, only if missing
  local missing=() t
  for t in haproxy:haproxy nginx:nginx stunnel4:stunnel4 wrk:wrk curl:curl openssl:openssl ss:iproute2 taskset:util-linux; do
    command -v "${t%%:*}" >/dev/null || missing+=("${t#*:}")
  done
  [[ -f /usr/lib/nginx/modules/ngx_stream_module.so ]] || missing+=(libnginx-mod-stream)
  [[ -x /usr/bin/time ]] || missing+=(time)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "installing with apt-get: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } \
    || { echo "cannot install ${missing[*]} (run as root, or install them)" >&2; exit 1; }
}

# weft from this repository, unless WEFT_BIN names another binary. WEFT_PROFILE=release (default)
# or dev (the unoptimised test build: only to check the harness, never for reported numbers)
ensure_weft() {
  local m need=0 profile=${WEFT_PROFILE:-release}
  for m in "${MODES[@]}"; do [[ $m == weft* ]] && need=1; done
  [[ $need == 1 && -z ${WEFT_BIN:-} ]] || return 0
  log "building weft from $REPO (cargo build --profile $profile -p weft)"
  cargo build --quiet --profile "$profile" --manifest-path "$REPO/Cargo.toml" -p weft || { echo "weft build failed" >&2; exit 1; }
  case $profile in dev) WEFT_BIN=$REPO/target/debug/weft ;; *) WEFT_BIN=$REPO/target/$profile/weft ;; esac
  export WEFT_BIN
}

prepare() {
  mkdir -p "$WORK/www" "$WORK/tmp"
  if [[ ! -s $CERTS/ca.crt ]] || ! openssl x509 -checkend 3600 -noout -in "$CERTS/frontend.crt" >/dev/null 2>&1; then
    rm -rf "$CERTS"; "$BENCH_DIR/gen-certs.sh" "$CERTS" >/dev/null
  fi
  set -a; source "$CERTS/names.env"; set +a   # exports SERVER_ID CLIENT_ID *_SPIFFE for hooks
  local want=$(( BULK_MB * 1000000 ))
  if [[ $(stat -c %s "$WORK/www/big.bin" 2>/dev/null || echo 0) -ne $want ]]; then
    head -c "$want" /dev/urandom > "$WORK/www/big.bin"
  fi
  for p in "$BACKEND_PORT" "$IN_PORT" "$OUT_PORT"; do
    if ss -ltnH "( sport = :$p )" | grep -q .; then echo "port $p already in use; aborting" >&2; exit 1; fi
  done
}

start_backend() {
  local d=$MODEDIR/backend-nginx; mkdir -p "$d/tmp"
  cat > "$d/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_timeout 120s; keepalive_requests 100000000;
  client_body_temp_path $d/tmp/body; proxy_temp_path $d/tmp/proxy; fastcgi_temp_path $d/tmp/fcgi;
  uwsgi_temp_path $d/tmp/uwsgi; scgi_temp_path $d/tmp/scgi;
  server {
    listen $BACKEND_ADDR backlog=4096;
    location = / { default_type text/plain; return 200 "$SMALL_BODY\n"; }
    location = /big.bin { root $WORK/www; }
  }
}
EOF
  launch backend nginx -e stderr -p "$d" -c "$d/nginx.conf"
}

# ------------------------------------------------------------------ built-in modes
# --- haproxy-plain: the same two L4 hops, no TLS (separates "extra hops" from "TLS" cost)
mode_haproxy_plain_inbound()  { haproxy_cfg in-plain  "bind $IN_LISTEN" "server app $BACKEND_ADDR"; launch inbound  haproxy -db -f "$MODEDIR/in-plain.cfg"; }
mode_haproxy_plain_outbound() { haproxy_cfg out-plain "bind $OUT_LISTEN" "server inb $IN_ADDR";     launch outbound haproxy -db -f "$MODEDIR/out-plain.cfg"; }

haproxy_cfg() { # name bindline serverline
  cat > "$MODEDIR/$1.cfg" <<EOF
global
  nbthread $PROXY_THREADS
  maxconn 4096
  ssl-server-verify required
defaults
  mode tcp
  timeout connect 5s
  timeout client 120s
  timeout server 120s
frontend fe
  $2
  default_backend be
backend be
  $3
EOF
}
# --- haproxy: tcp mode, TLS 1.3 only, client certs required and verified both ways
mode_haproxy_inbound() {
  haproxy_cfg in "bind $IN_LISTEN ssl crt $CERTS/backend-full.pem ca-file $CERTS/ca.crt verify required ssl-min-ver TLSv1.3 ciphersuites $TLS13_CIPHERS" \
                 "server app $BACKEND_ADDR"
  launch inbound haproxy -db -f "$MODEDIR/in.cfg"
}
mode_haproxy_outbound() {
  local reuse="no-ssl-reuse"; [[ $TLS_RESUME = 1 ]] && reuse=""
  haproxy_cfg out "bind $OUT_LISTEN" \
    "server inb $IN_ADDR ssl crt $CERTS/frontend-full.pem ca-file $CERTS/ca.crt verify required verifyhost $SERVER_ID sni str($SERVER_ID) ssl-min-ver TLSv1.3 ciphersuites $TLS13_CIPHERS $reuse"
  launch outbound haproxy -db -f "$MODEDIR/out.cfg"
}

# --- stunnel4: thread-per-connection; verifyChain+requireCert (= old verify=2), TLS1.3 only
stunnel_common() { cat <<EOF
foreground = yes
pid =
syslog = no
debug = 3
[svc]
sslVersionMin = TLSv1.3
ciphersuites = $TLS13_CIPHERS
CAfile = $CERTS/ca.crt
verifyChain = yes
TIMEOUTclose = 0
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
EOF
}
mode_stunnel_inbound() {
  { stunnel_common; cat <<EOF
accept = $IN_LISTEN
connect = $BACKEND_ADDR
cert = $CERTS/backend-chain.pem
key = $CERTS/backend.key
requireCert = yes
EOF
  } > "$MODEDIR/in.conf"
  launch inbound stunnel4 "$MODEDIR/in.conf"
}
mode_stunnel_outbound() {
  local resume=no; [[ $TLS_RESUME = 1 ]] && resume=yes
  { stunnel_common; cat <<EOF
client = yes
accept = $OUT_LISTEN
connect = $IN_ADDR
cert = $CERTS/frontend-chain.pem
key = $CERTS/frontend.key
checkHost = $SERVER_ID
sni = $SERVER_ID
sessionResume = $resume
EOF
  } > "$MODEDIR/out.conf"
  launch outbound stunnel4 "$MODEDIR/out.conf"
}

# --- nginx stream module (libnginx-mod-stream), single process, ssl_verify_client on
nginx_stream_conf() { # name serverblock
  local d=$MODEDIR/$1; mkdir -p "$d"
  local mod=/usr/lib/nginx/modules/ngx_stream_module.so
  cat > "$d/nginx.conf" <<EOF
load_module $mod;
daemon off; master_process $([[ $PROXY_THREADS -gt 1 ]] && echo on || echo off); worker_processes $PROXY_THREADS; pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
stream {
  server {
$2
  }
}
EOF
  echo "$d/nginx.conf"
}
mode_nginx_stream_inbound() {
  local c; c=$(nginx_stream_conf in "    listen $IN_LISTEN ssl backlog=4096;
    ssl_certificate $CERTS/backend-chain.pem; ssl_certificate_key $CERTS/backend.key;
    ssl_client_certificate $CERTS/ca.crt; ssl_verify_client on; ssl_verify_depth 3;
    ssl_protocols TLSv1.3; ssl_conf_command Ciphersuites $TLS13_CIPHERS;
    proxy_pass $BACKEND_ADDR;")
  launch inbound nginx -e stderr -p "$MODEDIR/in" -c "$c"
}
mode_nginx_stream_outbound() {
  local reuse=off; [[ $TLS_RESUME = 1 ]] && reuse=on
  local c; c=$(nginx_stream_conf out "    listen $OUT_LISTEN backlog=4096;
    proxy_pass $IN_ADDR;
    proxy_ssl on; proxy_ssl_protocols TLSv1.3; proxy_ssl_conf_command Ciphersuites $TLS13_CIPHERS;
    proxy_ssl_certificate $CERTS/frontend-chain.pem; proxy_ssl_certificate_key $CERTS/frontend.key;
    proxy_ssl_trusted_certificate $CERTS/ca.crt; proxy_ssl_verify on; proxy_ssl_verify_depth 3;
    proxy_ssl_name $SERVER_ID; proxy_ssl_server_name on; proxy_ssl_session_reuse $reuse;")
  launch outbound nginx -e stderr -p "$MODEDIR/out" -c "$c"
}

# --- custom: arbitrary commands from the environment (evaluated with the variables above)
mode_custom_inbound()  { : "${INBOUND_CMD:?set INBOUND_CMD}";   launch inbound  bash -c "exec $INBOUND_CMD"; }
mode_custom_outbound() { : "${OUTBOUND_CMD:?set OUTBOUND_CMD}"; launch outbound bash -c "exec $OUTBOUND_CMD"; }

export OUT_LISTEN IN_LISTEN IN_ADDR BACKEND_ADDR CERTS PROXY_THREADS TLS13_CIPHERS TLS_RESUME

# ------------------------------------------------------------------ checks
mtls_check() { # -> echo ok | FAIL:<why>
  local code_with code_without proto
  code_with=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$CERTS/ca.crt" \
      --cert "$CERTS/frontend-chain.pem" --key "$CERTS/frontend.key" \
      --resolve "$SERVER_ID:$IN_PORT:$HOST" "https://$SERVER_ID:$IN_PORT/")
  code_without=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$CERTS/ca.crt" \
      --resolve "$SERVER_ID:$IN_PORT:$HOST" "https://$SERVER_ID:$IN_PORT/")
  proto=$(timeout 5 openssl s_client -brief -connect "$IN_LISTEN" -servername "$SERVER_ID" \
      -CAfile "$CERTS/ca.crt" -cert "$CERTS/frontend.crt" -cert_chain "$CERTS/issuer.crt" \
      -key "$CERTS/frontend.key" </dev/null 2>&1 | awk -F': ' '/Protocol version|Ciphersuite|Verification:/{printf "%s ", $2}')
  echo "inbound probe: with-cert=$code_with without-cert=$code_without; $proto" >> "$MODEDIR/checks.txt"
  if [[ $code_with == 200 && $code_without != 200 && $proto == *TLSv1.3* ]]; then echo ok
  else echo "FAIL(with=$code_with,without=$code_without)"; fi
}

# mTLS connections the inbound accepted so far: a mode's hook mode_<name>_mtls_accepted, else
# for the L4 peers none is known ("-").  direct and haproxy-plain have no mTLS: "-".
mtls_accepted() { # fn
  if declare -F "mode_${1}_mtls_accepted" >/dev/null; then "mode_${1}_mtls_accepted"; else echo -; fi
}

# ------------------------------------------------------------------ one mode run
run_mode() { # mode round
  local mode=$1 round=$2 fn=${1//-/_} target port=$OUT_PORT f
  MODEDIR=$WORK/runs/$(date +%H%M%S)-$mode-r$round; mkdir -p "$MODEDIR"; export MODEDIR
  [[ -f $BENCH_DIR/modes/$mode.sh ]] && source "$BENCH_DIR/modes/$mode.sh"
  # foreign load on this shared box, sampled for 1s while none of our processes run
  local s0 BG; s0=$(sysstat); sleep 1
  BG=$(echo "$s0 $(sysstat)" | awk '{dt=$4-$1; di=$5-$2; if(dt<=0)dt=1; printf "%.0f", 100*(dt-di)/dt}')
  log "=== $mode round $round ($LAYOUT) background-load=${BG}% -> $MODEDIR"
  start_backend
  wait_listen "$BACKEND_PORT" || { log "backend did not start"; cat "$MODEDIR/backend.log" >&2; stop_all; return 1; }
  if [[ $mode == direct ]]; then
    port=$BACKEND_PORT
  else
    if ! declare -F "mode_${fn}_inbound" >/dev/null; then log "unknown mode $mode"; stop_all; return 1; fi
    "mode_${fn}_inbound";  wait_listen "$IN_PORT"  || { log "inbound did not start";  cat "$MODEDIR/inbound.log" >&2; stop_all; return 1; }
    "mode_${fn}_outbound"; wait_listen "$OUT_PORT" || { log "outbound did not start"; cat "$MODEDIR/outbound.log" >&2; stop_all; return 1; }
  fi
  target=http://$HOST:$port
  # end-to-end smoke test
  local body; body=$(curl -s --max-time 5 "$target/")
  if [[ $body != "$SMALL_BODY" ]]; then log "smoke test FAILED through $mode (got '$body')"; stop_all; return 1; fi
  local mtls=n/a
  if [[ $mode != direct && $mode != haproxy-plain && $MTLS_CHECK == 1 ]]; then
    if declare -F "mode_${fn}_mtls_check" >/dev/null; then mtls=$("mode_${fn}_mtls_check"); else mtls=$(mtls_check); fi
  fi
  IDLE_MB=-; IDLE_ANON_MB=-
  if [[ $mode != direct ]]; then
    echo "idle_rss_kb out=$(rss_kb outbound) in=$(rss_kb inbound) anon_kb out=$(anon_kb outbound) in=$(anon_kb inbound)" >> "$MODEDIR/rss.txt"
    IDLE_MB="$(mb "$(rss_kb outbound)")/$(mb "$(rss_kb inbound)")"
    IDLE_ANON_MB="$(mb "$(anon_kb outbound)")/$(mb "$(anon_kb inbound)")"
  fi
  [[ $mode == haproxy-plain ]] && mtls=plain

  # warm-up (unrecorded)
  [[ $WARMUP -gt 0 ]] && pin client wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${WARMUP}s" "$target/" >/dev/null 2>&1

  # (a) keep-alive load, closed loop
  snap_begin
  timed "$MODEDIR/ka.cpu" wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${WRK_DURATION}s" --latency "$target/" > "$MODEDIR/ka.txt" 2>&1
  snap_end
  parse_wrk "$MODEDIR/ka.txt"
  local KA_P50=$W_P50 KA_P90=$W_P90 KA_P99=$W_P99 KA_RPS=$W_RPS KA_REQS=$W_REQS KA_ERRS=$W_ERRS
  local KA_CL; KA_CL=$(client_cpu "$MODEDIR/ka.cpu")
  local KA_OUT=$P_OUT KA_IN=$P_IN KA_BE=$P_BE KA_BUSY=$P_BUSY KA_STEAL=$P_STEAL
  local PX_US_REQ; PX_US_REQ=$(awk -v o="$P_OUT" -v i="$P_IN" -v n="${W_REQS:-0}" 'BEGIN{ if(n>0) printf "%.1f",(o+i)*1e6/n; else print "-"}')

  # (a') unloaded latency: 1 connection, 1 thread
  local C1_P50=- C1_P99=- C1_RPS=-
  if [[ $C1_DURATION -gt 0 ]]; then
    pin client wrk -t1 -c1 -d"${C1_DURATION}s" --latency "$target/" > "$MODEDIR/c1.txt" 2>&1
    parse_wrk "$MODEDIR/c1.txt"; C1_P50=$W_P50; C1_P99=$W_P99; C1_RPS=$W_RPS
  fi

  # (a'') open-loop fixed-rate latency (oha, coordinated-omission corrected)
  local FR_P50=- FR_P99=- FR_RPS=-
  if [[ $FIXED_RATE -gt 0 && -n $OHA ]]; then
    pin client "$OHA" -z "${FIXED_DURATION}s" -c "$WRK_CONNS" -q "$FIXED_RATE" --latency-correction --no-tui \
        --output-format json "$target/" > "$MODEDIR/fixed.json" 2>"$MODEDIR/fixed.err"
    read -r FR_P50 FR_P99 FR_RPS < <(python3 -c '
import json,sys
d=json.load(open(sys.argv[1])); p=d["latencyPercentiles"]; s=d["summary"]
print(round(p["p50"]*1e6), round(p["p99"]*1e6), round(s["requestsPerSec"]))' "$MODEDIR/fixed.json" 2>/dev/null || echo "- - -")
  fi

  # (b) bulk single-stream download
  : > "$MODEDIR/bulk.txt"
  snap_begin
  local t0 t1; t0=$(date +%s.%N)
  for ((f = 1; f <= BULK_REPS; f++)); do
    timed "$MODEDIR/bulk$f.cpu" curl -s -o /dev/null --max-time 120 -w '%{http_code} %{size_download} %{time_total}\n' "$target/big.bin" >> "$MODEDIR/bulk.txt"
  done
  t1=$(date +%s.%N)
  snap_end
  local BULK_MBS BULK_MIN BULK_MAX BULK_BYTES
  read -r BULK_MBS BULK_MIN BULK_MAX BULK_BYTES < <(awk '$1==200{b+=$2; t+=$3; r=$2/$3/1e6; if(min==""||r<min)min=r; if(r>max)max=r}
     END{ if(t>0) printf "%.0f %.0f %.0f %d\n", b/t/1e6, min, max, b; else print "- - - 0"}' "$MODEDIR/bulk.txt")
  local PX_MS_MB; PX_MS_MB=$(awk -v o="$P_OUT" -v i="$P_IN" -v b="$BULK_BYTES" 'BEGIN{ if(b>0) printf "%.2f",(o+i)*1e3/(b/1e6); else print "-"}')
  local BU_OUT=$P_OUT BU_IN=$P_IN BU_BE=$P_BE BU_BUSY=$P_BUSY BU_STEAL=$P_STEAL
  local BU_CL; BU_CL=$(cat "$MODEDIR"/bulk*.cpu 2>/dev/null | awk '{s+=$1+$2} END{printf "%.2f", s}')
  local BU_WALL; BU_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')

  # (c) new connection per request ("Connection: close"): TCP + full mTLS handshake per request
  snap_begin
  timed "$MODEDIR/conn.cpu" wrk -t"$WRK_THREADS" -c"$CONN_CONNS" -d"${CONN_DURATION}s" --latency -H 'Connection: close' "$target/" > "$MODEDIR/conn.txt" 2>&1
  snap_end
  parse_wrk "$MODEDIR/conn.txt"
  local CO_CPS=$W_RPS CO_P50=$W_P50 CO_P99=$W_P99 CO_ERRS=$W_ERRS CO_REQS=$W_REQS
  local CO_CL; CO_CL=$(client_cpu "$MODEDIR/conn.cpu")
  local CO_OUT=$P_OUT CO_IN=$P_IN CO_BE=$P_BE CO_BUSY=$P_BUSY CO_STEAL=$P_STEAL
  local PX_US_CONN; PX_US_CONN=$(awk -v o="$P_OUT" -v i="$P_IN" -v n="${W_REQS:-0}" 'BEGIN{ if(n>0) printf "%.0f",(o+i)*1e6/n; else print "-"}')

  # (d) HTTP with a new app connection per request: how many mTLS connections did it cost?
  local HN_RPS=- HN_P50=- HN_P99=- HN_ERRS=0 HN_MTLS=- HN_US=-
  if [[ $HTTPNEW_DURATION -gt 0 ]]; then
    local m0 m1; m0=$(mtls_accepted "$fn")
    snap_begin
    pin client wrk -t"$WRK_THREADS" -c"$HTTPNEW_CONNS" -d"${HTTPNEW_DURATION}s" --latency -H 'Connection: close' "$target/" > "$MODEDIR/httpnew.txt" 2>&1
    snap_end
    m1=$(mtls_accepted "$fn")
    parse_wrk "$MODEDIR/httpnew.txt"
    HN_RPS=$W_RPS; HN_P50=$W_P50; HN_P99=$W_P99; HN_ERRS=$W_ERRS
    HN_MTLS=$(awk -v a="$m0" -v b="$m1" -v n="${W_REQS:-0}" 'BEGIN{ if(a!="-" && b!="-" && n>0) printf "%.2f",(b-a)/n; else print "-"}')
    HN_US=$(awk -v o="$P_OUT" -v i="$P_IN" -v n="${W_REQS:-0}" 'BEGIN{ if(n>0) printf "%.0f",(o+i)*1e6/n; else print "-"}')
  fi

  # peak RSS of each proxy (VmHWM, summed over its process tree)
  local RSS_OUT=- RSS_IN=-
  if [[ $mode != direct ]]; then
    echo "end_rss_kb out=$(rss_kb outbound) in=$(rss_kb inbound) hwm_kb out=$(hwm_kb outbound) in=$(hwm_kb inbound)" >> "$MODEDIR/rss.txt"
    RSS_OUT=$(mb "$(hwm_kb outbound)"); RSS_IN=$(mb "$(hwm_kb inbound)")
  fi
  stop_all

  [[ -s $RESULTS ]] || printf '%s\n' "ts layout mode round ka_p50_us ka_p90_us ka_p99_us ka_rps ka_errs c1_p50_us c1_p99_us c1_rps fr_p50_us fr_p99_us fr_rps bulk_MBps bulk_min bulk_max conn_cps conn_p50_us conn_p99_us conn_errs rss_out_MB rss_in_MB px_us_per_req px_ms_per_MB px_us_per_conn ka_cpu_client ka_cpu_out ka_cpu_in ka_cpu_be ka_busy_pct ka_steal_pct bu_wall bu_cpu_client bu_cpu_out bu_cpu_in bu_cpu_be bu_busy_pct co_cpu_client co_cpu_out co_cpu_in co_cpu_be co_busy_pct co_steal_pct mtls bg_pct hn_rps hn_p50_us hn_p99_us hn_errs hn_mtls_per_req px_us_per_hn idle_MB idle_anon_MB" | tr ' ' '\t' > "$RESULTS"
  printf '%s\n' "$(date +%s) $LAYOUT $mode $round $KA_P50 $KA_P90 $KA_P99 $KA_RPS $KA_ERRS $C1_P50 $C1_P99 $C1_RPS $FR_P50 $FR_P99 $FR_RPS $BULK_MBS $BULK_MIN $BULK_MAX $CO_CPS $CO_P50 $CO_P99 $CO_ERRS $RSS_OUT $RSS_IN $PX_US_REQ $PX_MS_MB $PX_US_CONN $KA_CL $KA_OUT $KA_IN $KA_BE $KA_BUSY $KA_STEAL $BU_WALL $BU_CL $BU_OUT $BU_IN $BU_BE $BU_BUSY $CO_CL $CO_OUT $CO_IN $CO_BE $CO_BUSY $CO_STEAL $mtls $BG $HN_RPS $HN_P50 $HN_P99 $HN_ERRS $HN_MTLS $HN_US $IDLE_MB $IDLE_ANON_MB" | tr ' ' '\t' >> "$RESULTS"
  log "$mode r$round: p50=${KA_P50}us p99=${KA_P99}us rps=$KA_RPS c1_p50=${C1_P50}us MB/s=$BULK_MBS conn/s=$CO_CPS http-newconn/s=$HN_RPS (mTLS/req=$HN_MTLS) rss=$RSS_OUT/$RSS_IN MB (idle $IDLE_MB, private $IDLE_ANON_MB) mtls=$mtls errs=$KA_ERRS/$CO_ERRS"
}

# ------------------------------------------------------------------ report
report() { # prints per-run table + per-mode median summary for rows of this invocation (ts >= $1)
  local since=$1
  awk -F'\t' -v since="$since" '
  function med(arr, n,   i,j,t,a) { if(n==0) return "-"; for(i=1;i<=n;i++) a[i]=arr[i];
     for(i=1;i<=n;i++) for(j=i+1;j<=n;j++) if(a[j]+0<a[i]+0){t=a[i];a[i]=a[j];a[j]=t}
     return (n%2)? a[(n+1)/2] : (a[n/2]+a[n/2+1])/2 }
  NR==1 { for(i=1;i<=NF;i++) H[$i]=i; next }
  $1 < since { next }
  { rows[++R]=$0 }
  END {
    fmt="%-14s %2s %7s %7s %7s %8s %5s | %6s %6s | %6s | %7s %7s | %7s %6s | %6s %6s %11s %9s | %6s %6s %6s | %4s %5s %4s | %s\n"
    printf fmt, "mode","r","p50us","p90us","p99us","req/s","errs","c1p50","c1p99","MB/s","conn/s","hsp50us","hnew/s","mTLS/r","RSSout","RSSin","idleMB","privMB","us/req","ms/MB","us/con","busy","steal","bg%","mtls"
    for(r=1;r<=R;r++){ split(rows[r],f,"\t"); m=f[H["mode"]]
      printf fmt, m, f[H["round"]], f[H["ka_p50_us"]], f[H["ka_p90_us"]], f[H["ka_p99_us"]], f[H["ka_rps"]], f[H["ka_errs"]]+f[H["conn_errs"]],
        f[H["c1_p50_us"]], f[H["c1_p99_us"]], f[H["bulk_MBps"]], f[H["conn_cps"]], f[H["conn_p50_us"]], f[H["hn_rps"]], f[H["hn_mtls_per_req"]], f[H["rss_out_MB"]], f[H["rss_in_MB"]],
        f[H["idle_MB"]], f[H["idle_anon_MB"]], f[H["px_us_per_req"]], f[H["px_ms_per_MB"]], f[H["px_us_per_conn"]], f[H["ka_busy_pct"]], f[H["ka_steal_pct"]], f[H["bg_pct"]], f[H["mtls"]]
      if(!(m in seen)){seen[m]=1; order[++M]=m}
      n=++cnt[m]
      split("ka_p50_us ka_p99_us ka_rps c1_p50_us bulk_MBps conn_cps fr_p50_us fr_p99_us rss_out_MB rss_in_MB px_us_per_req px_ms_per_MB px_us_per_conn hn_rps", K, " ")
      for(k in K){ key=K[k]; v=f[H[key]]; if(v!="-" && v!="") { c=++vc[m,key]; V[m,key,c]=v } }
    }
    print ""
    print "median per mode over rounds; ratio = mode/direct (latency: >1 is slower; rps/MB/s/conn/s: <1 is slower)"
    fmt2="%-14s %3s %7s %7s %8s %7s %7s %7s %7s %7s %7s %7s %7s | %6s %6s %6s %6s %6s %6s %6s\n"
    printf fmt2, "mode","n","p50us","p99us","req/s","c1p50","MB/s","conn/s","hnew/s","frp50","frp99","RSSout","RSSin","x p50","x p99","x rps","x c1","x MB/s","x cps","x hnew"
    split("ka_p50_us ka_p99_us ka_rps c1_p50_us bulk_MBps conn_cps fr_p50_us fr_p99_us rss_out_MB rss_in_MB hn_rps", K2, " ")
    for(o=1;o<=M;o++){ m=order[o]
      for(k=1;k<=11;k++){ key=K2[k]; n=vc[m,key]+0; delete tmp; for(i=1;i<=n;i++) tmp[i]=V[m,key,i]; MED[m,key]=med(tmp,n) }
    }
    for(o=1;o<=M;o++){ m=order[o]
      rr=""
      split("ka_p50_us ka_p99_us ka_rps c1_p50_us bulk_MBps conn_cps hn_rps", K3, " ")
      for(k=1;k<=7;k++){ key=K3[k]; d=MED["direct",key]; v=MED[m,key]
        if(("direct",key) in MED && d!="-" && d>0 && v!="-") X[k]=sprintf("%.2f", v/d); else X[k]="-" }
      printf fmt2, m, cnt[m], MED[m,"ka_p50_us"], MED[m,"ka_p99_us"], MED[m,"ka_rps"], MED[m,"c1_p50_us"], MED[m,"bulk_MBps"], MED[m,"conn_cps"], MED[m,"hn_rps"],
        MED[m,"fr_p50_us"], MED[m,"fr_p99_us"], MED[m,"rss_out_MB"], MED[m,"rss_in_MB"], X[1],X[2],X[3],X[4],X[5],X[6],X[7]
    }
  }' "$RESULTS"
}

# ------------------------------------------------------------------ main
[[ -n ${NICE:-} ]] && renice -n "$NICE" -p $$ >/dev/null   # children inherit; e.g. NICE=-10 to out-prioritise foreign load
MODES=("$@"); [[ ${#MODES[@]} -eq 0 || ${MODES[0]} == all ]] && MODES=(direct haproxy-plain stunnel haproxy nginx-stream)
# A misspelt mode is refused before anything is installed, built or run, not rounds later.
known_modes() {
  local m
  for m in $(declare -F | awk '{print $3}' | sed -n 's/^mode_\(.*\)_inbound$/\1/p' | tr _ -) "$BENCH_DIR"/modes/*.sh; do
    m=${m##*/}; echo "${m%.sh}"
  done | sort -u | tr '\n' ' '
}
for m in "${MODES[@]}"; do
  if [[ $m == *-alt && ! -x ${WEFT_ALT_BIN:-} ]]; then
    echo "mode $m runs the weft build WEFT_ALT_BIN names; set it to an executable weft binary (now: '${WEFT_ALT_BIN:-unset}')" >&2
    exit 2
  fi
  [[ $m == direct || -f $BENCH_DIR/modes/$m.sh ]] && continue
  declare -F "mode_${m//-/_}_inbound" >/dev/null && continue
  echo "unknown mode '$m': expected direct or one of: $(known_modes)(a file bench/modes/NAME.sh adds a mode)" >&2
  exit 2
done
ensure_tools
ensure_weft
prepare
START_TS=$(date +%s)
log "modes: ${MODES[*]}  rounds=$ROUNDS  $LAYOUT  wrk -t$WRK_THREADS -c$WRK_CONNS -d${WRK_DURATION}s  conn -c$CONN_CONNS -d${CONN_DURATION}s  bulk ${BULK_REPS}x${BULK_MB}MB  ciphers=$TLS13_CIPHERS resume=$TLS_RESUME  oha=${OHA:-none} fixed_rate=$FIXED_RATE"
for ((r = 1; r <= ROUNDS; r++)); do
  for m in "${MODES[@]}"; do run_mode "$m" "$r" || log "mode $m round $r failed"; done
done
echo
echo "# results ($LAYOUT, $(nproc) cpus, $(date -u +%FT%TZ)); raw rows: $RESULTS"
echo "# latencies in microseconds; p50/p90/p99 = wrk -t$WRK_THREADS -c$WRK_CONNS keep-alive (closed loop); c1 = wrk -t1 -c1;"
echo "# hsp50 = latency of a request on a fresh connection (incl. TCP+mTLS setup); us/req, ms/MB, us/con = CPU of outbound+inbound proxies per unit"
echo "# hnew/s = HTTP requests/s with a new app connection each (Connection: close); mTLS/r = mTLS connections the inbound accepted per such request (- where the mode cannot tell)"
echo "# RSSout/RSSin = peak RSS per proxy (MB); idleMB = RSS after the smoke test (out/in); privMB = its private part (RssAnon: heap and stacks; the rest is the mapped binary and libraries, shared with every process running the same files)"
echo "# load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
report "$START_TS"
