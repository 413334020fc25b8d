# Plug-in mode: weft L4 as `weft`, run from another build (WEFT_ALT_BIN), for an A/B of two
# builds in one interleaved run, e.g. WEFT_ALT_BIN=/tmp/weft-b bench/peer-bench.sh weft weft-alt
source "$BENCH_DIR/modes/weft.sh"
mode_weft_alt_inbound()    { WEFT_BIN=$WEFT_ALT_BIN mode_weft_inbound; }
mode_weft_alt_outbound()   { WEFT_BIN=$WEFT_ALT_BIN mode_weft_outbound; }
mode_weft_alt_mtls_check() { mode_weft_mtls_check; }
mode_weft_alt_mtls_accepted() { mode_weft_mtls_accepted; }
