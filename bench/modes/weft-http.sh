# Plug-in mode: weft with BACKEND_PORT not opaque (weft's default): the inbound detects HTTP/1
# and parses and authorizes every request (hyper), instead of forwarding bytes.
source "$BENCH_DIR/modes/weft.sh"
mode_weft_http_inbound()    { WEFT_OPAQUE=0 mode_weft_inbound; }
mode_weft_http_outbound()   { WEFT_OPAQUE=0 mode_weft_outbound; }
mode_weft_http_mtls_check() { mode_weft_mtls_check; }
mode_weft_http_mtls_accepted() { mode_weft_mtls_accepted; }
