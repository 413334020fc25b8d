#!/usr/bin/env bash
# Build the test control plane (kube-apiserver, etcd, kubectl, kube-controller-manager, kube-scheduler, kwok and
# kwok's stage set) from the Go module proxy into $K8S_BIN_DIR, using the committed wrapper modules in mod/
# (go.sum pins every hash; -mod=readonly). Reuses the normal Go caches (GOMODCACHE, GOCACHE) and skips a binary
# that is already there at the right version. Safe to run concurrently: one build at a time per bin dir (flock);
# a second caller waits and then finds everything built.
#   K8S_BIN_DIR        where binaries go (default: $WEFT_K8S_CACHE/bin/<versions>, WEFT_K8S_CACHE=/var/cache/weft-k8s)
#   K8S_FORCE_BUILD=1  rebuild even if the binaries exist
# stdout: the bin dir (one line). Progress and timings go to stderr.
# Needs: go >= 1.26 on PATH, the Go module proxy (first run only), ~1.1 GB GOMODCACHE + ~4 GB GOCACHE.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/versions.env"
K8S_BIN_DIR=${K8S_BIN_DIR:-$WEFT_K8S_CACHE/bin/$K8S_BIN_KEY}
mkdir -p "$K8S_BIN_DIR"
command -v go >/dev/null || { echo "build.sh: no 'go' on PATH; install Go >= $GO_MIN" >&2; exit 1; }
gov=$(go env GOVERSION); gov=${gov#go}
if [ "$(printf '%s\n%s\n' "$GO_MIN" "$gov" | sort -V | head -1)" != "$GO_MIN" ]; then
  echo "build.sh: go $gov is too old; the pinned modules need go >= $GO_MIN" >&2; exit 1
fi
command -v flock >/dev/null || { echo "build.sh: needs flock (util-linux)" >&2; exit 1; }

# one build per bin dir at a time; whoever waits re-checks and finds the binaries built
exec 9>"$K8S_BIN_DIR/.build.lock"
if ! flock -n 9; then
  echo "build.sh: another build of $K8S_BIN_DIR is running; waiting for it" >&2
  flock 9
fi

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
# version stamps (otherwise /version says v0.0.0-master+$Format:...$)
vflags="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1"
vflags="$vflags -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
export CGO_ENABLED=0   # static, as upstream ships them
export GOWORK=off      # never let a go.work above this dir take part
common=(-mod=readonly -trimpath -buildvcs=false -tags=selinux,notest)
T_ALL=$SECONDS

build_one() { # name module-dir package ldflags expected-version-string version-args...
  local name=$1 dir=$2 pkg=$3 ld=$4 want=$5; shift 5
  local out="$K8S_BIN_DIR/$name"
  if [ -x "$out" ] && [ "${K8S_FORCE_BUILD:-0}" != 1 ] && "$out" "$@" 2>/dev/null | grep -qF -- "$want"; then
    echo "build.sh: $name up to date ($out)" >&2; return 0
  fi
  echo "build.sh: building $name ($pkg) ..." >&2
  local t0=$SECONDS
  (cd "$HERE/mod/$dir" && go build "${common[@]}" -ldflags="-s -w $ld" -o "$out.tmp.$$" "$pkg")
  mv -f "$out.tmp.$$" "$out"
  echo "build.sh: $name built in $((SECONDS - t0))s: $("$out" "$@" 2>&1 | head -1)" >&2
}

build_one kube-apiserver apiserver k8s.io/kubernetes/cmd/kube-apiserver "$vflags" "Kubernetes $K8S_VERSION" --version
build_one etcd etcd go.etcd.io/etcd/server/v3 "" "etcd Version: ${ETCD_VERSION#v}" --version
build_one kubectl apiserver k8s.io/kubernetes/cmd/kubectl "$vflags" "Client Version: $K8S_VERSION" version --client
build_one kube-controller-manager apiserver k8s.io/kubernetes/cmd/kube-controller-manager "$vflags" "Kubernetes $K8S_VERSION" --version
build_one kube-scheduler apiserver k8s.io/kubernetes/cmd/kube-scheduler "$vflags" "Kubernetes $K8S_VERSION" --version
build_one kwok kwok sigs.k8s.io/kwok/cmd/kwok "" "kwok version $KWOK_VERSION" --version

# kwok's "fast" stage set (= its kustomize/stage/fast: node Ready + lease heartbeat; pod Running + IP; Job pods
# complete; deletion) ships in its module zip. Without the heartbeat stage kwok keeps no node Lease and the
# controller-manager marks the node NotReady/unreachable after ~50 s.
st="$K8S_BIN_DIR/kwok-stages.yaml"
if ! grep -q '^kind: Stage' "$st" 2>/dev/null || [ "${K8S_FORCE_BUILD:-0}" = 1 ]; then
  # 'go mod download' first: the module may be missing from this GOMODCACHE when kwok itself was not rebuilt
  kdir=$(cd "$HERE/mod/kwok" && go mod download sigs.k8s.io/kwok && go list -mod=readonly -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  [ -n "$kdir" ] && [ -d "$kdir/kustomize/stage" ] || { echo "build.sh: kwok module dir not found" >&2; exit 1; }
  for f in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
           pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    echo '---'; cat "$kdir/kustomize/stage/$f.yaml"
  done > "$st.tmp.$$"
  mv -f "$st.tmp.$$" "$st"
fi

# the stamp says "this dir is complete for these versions": test binaries check it before running build.sh
echo "$K8S_BIN_KEY" > "$K8S_BIN_DIR/.complete.tmp.$$"
mv -f "$K8S_BIN_DIR/.complete.tmp.$$" "$K8S_BIN_DIR/.complete"
echo "build.sh: all binaries ready in $K8S_BIN_DIR after $((SECONDS - T_ALL))s" >&2
echo "$K8S_BIN_DIR"
