#!/usr/bin/env bash
# The guide's certificate steps with weft: anchor, issuer, a workload leaf,
# then the checks. Runs in a scratch directory; touches nothing else.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --quiet --manifest-path "$repo/Cargo.toml" -p weft
weft="$repo/target/debug/weft"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

step() { printf '\n$ %s\n' "$*"; "$@"; }

step "$weft" certs create root.linkerd.cluster.local ca.crt ca.key \
  --profile root-ca --no-password --insecure --not-after 87600h
step "$weft" certs create identity.linkerd.cluster.local issuer.crt issuer.key \
  --profile intermediate-ca --not-after 8760h --no-password --insecure --ca ca.crt --ca-key ca.key
step "$weft" check --identity-trust-anchors-file ca.crt \
  --identity-issuer-certificate-file issuer.crt --identity-issuer-key-file issuer.key
step "$weft" certs create web.demo.serviceaccount.identity.weft.cluster.local web.crt web.key \
  --profile leaf --ca issuer.crt --ca-key issuer.key
step "$weft" certs inspect web.crt
step "$weft" certs verify web.crt --roots ca.crt --intermediates issuer.crt
echo
echo "Keys are written mode 0600:"
ls -l ca.key issuer.key web.key | awk '{print "  " $1, $NF}'
