# Plug-in mode: weft-http run from another build (WEFT_ALT_BIN), the HTTP half of an A/B
# (see weft-alt.sh).
source "$BENCH_DIR/modes/weft-alt.sh"
mode_weft_http_alt_inbound()    { WEFT_OPAQUE=0 mode_weft_alt_inbound; }
mode_weft_http_alt_outbound()   { WEFT_OPAQUE=0 mode_weft_alt_outbound; }
mode_weft_http_alt_mtls_check() { mode_weft_mtls_check; }
mode_weft_http_alt_mtls_accepted() { mode_weft_mtls_accepted; }
