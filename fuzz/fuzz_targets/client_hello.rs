//! The ClientHello peek: every inbound connection's first bytes are judged by
//! `proxy::detect::judge` (TLS or not, and the SNI) and, once decrypted, by
//! `classify` (HTTP/1, HTTP/2 or opaque). Hostile bytes must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::detect::{Protocol, Start, classify, judge};

fuzz_target!(|data: &[u8]| {
    let start = judge(data);
    if let Some(Start::Tls { sni: Some(sni) }) = &start {
        // rustls only reports a syntactically valid DNS name.
        assert!(!sni.is_empty(), "an empty SNI was reported");
    }
    // A first byte other than a TLS handshake record is judged at once.
    if data.first().is_some_and(|b| *b != 0x16) {
        assert_eq!(start, Some(Start::Other));
    }
    // (Up to 8 KiB: past that, bytes without a line end are judged opaque.)
    if let Some(p) = classify(data).filter(|_| data.len() < 8192) {
        // A verdict stands as more bytes arrive (the detector stops at the first one),
        // except for HTTP/2, which needs the whole preface.
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\r\n");
        if p != Protocol::Http2 {
            assert_eq!(
                classify(&longer),
                Some(p),
                "more bytes changed the protocol"
            );
        }
    }
});
