//! The transport header (`proxy::transport_header::read`): read by the inbound
//! proxy from any mesh peer after the TLS handshake. Property: a header that
//! is accepted, written back out, reads back equal.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use proxy::detect::Protocol;
use proxy::transport_header::{PREFACE, TransportHeader, declared, read, write};

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

/// Frames `h` as a peer sends it.
fn frame(h: &TransportHeader) -> Vec<u8> {
    let body = prost::Message::encode_to_vec(h);
    let mut out = PREFACE.to_vec();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fuzz_target!(|data: &[u8]| {
    rt().block_on(async {
        let mut r = data;
        let Ok((h, port)) = read(&mut r).await else {
            return;
        };
        assert_eq!(i32::from(port), h.port);
        // Parsed, then serialised: parses back equal, and consumes exactly its bytes.
        let mut again = frame(&h);
        again.extend_from_slice(b"rest");
        let mut r2 = again.as_slice();
        let (h2, port2) = read(&mut r2).await.expect("a re-encoded header reads back");
        assert_eq!((&h2, port2), (&h, port));
        assert_eq!(r2, b"rest");
        // What the outbound proxy writes for the same port, name and
        // declared protocol reads back too, declaring the same.
        let protocol = declared(&h);
        let mut written = Vec::new();
        write(
            &mut written,
            port,
            &h.name,
            protocol.unwrap_or(Protocol::Opaque),
        )
        .await
        .expect("write to a Vec");
        let (h3, port3) = read(&mut written.as_slice())
            .await
            .expect("a written header reads back");
        assert_eq!(
            (h3.name.as_str(), port3, declared(&h3)),
            (h.name.as_str(), port, protocol)
        );
    });
});
