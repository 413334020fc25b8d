# Plug-in mode: weft with tokio's default worker count (one per CPU) instead of PROXY_THREADS.
source "$BENCH_DIR/modes/weft.sh"
mode_weft_mt_inbound()    { WEFT_WORKERS=default mode_weft_inbound; }
mode_weft_mt_outbound()   { WEFT_WORKERS=default mode_weft_outbound; }
mode_weft_mt_mtls_check() { mode_weft_mtls_check; }
mode_weft_mt_mtls_accepted() { mode_weft_mtls_accepted; }
