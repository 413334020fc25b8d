# Plug-in mode: weft L4 (opaque port) with the peers' handshake instead of weft's default:
# TLS_AES_128_GCM_SHA256 (TLS13_CIPHERS) and X25519 key exchange (the peers' OpenSSL default),
# where weft by default offers AES-256-GCM and the hybrid post-quantum X25519MLKEM768 first.
source "$BENCH_DIR/modes/weft.sh"
mode_weft_classic_inbound()    { WEFT_TLS_ARGS="--tls-cipher-suites $TLS13_CIPHERS --tls-key-exchange X25519" mode_weft_inbound; }
mode_weft_classic_outbound()   { WEFT_TLS_ARGS="--tls-cipher-suites $TLS13_CIPHERS --tls-key-exchange X25519" mode_weft_outbound; }
mode_weft_classic_mtls_check() { mode_weft_mtls_check; }
mode_weft_classic_mtls_accepted() { mode_weft_mtls_accepted; }
