//! Linkerd's transport header: sent by the client proxy right after a TLS
//! handshake that negotiated ALPN `transport.l5d.io/v1`, naming the port the
//! connection is for. Not in linkerd2-proxy-api, so the small message is here.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::detect::Protocol;

pub const ALPN: &[u8] = b"transport.l5d.io/v1";
pub const PREFACE: &[u8] = b"transport.l5d.io/v1\r\n\r\n";
/// Headers are a few bytes; anything large is a lie.
const MAX_LEN: u32 = 64 * 1024;

#[derive(Clone, PartialEq, prost::Message)]
pub struct TransportHeader {
    #[prost(int32, tag = "1")]
    pub port: i32,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, optional, tag = "3")]
    pub session_protocol: Option<SessionProtocol>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionProtocol {
    #[prost(oneof = "session_protocol::Kind", tags = "1, 2")]
    pub kind: Option<session_protocol::Kind>,
}

pub mod session_protocol {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Http1(super::Http1),
        #[prost(message, tag = "2")]
        Http2(super::Http2),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Http1 {}
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Http2 {}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("the connection ended inside the transport header (truncated)")]
    Truncated,
    #[error("the transport header preface is wrong; expected \"transport.l5d.io/v1\\r\\n\\r\\n\"")]
    Preface,
    #[error("the transport header claims {0} bytes; at most {MAX_LEN} are allowed")]
    TooLong(u32),
    #[error("the transport header does not decode: {0}")]
    Decode(#[source] prost::DecodeError),
    #[error("the transport header names port {0}, which is not a TCP port")]
    BadPort(i32),
    #[error("reading the transport header: {0}")]
    Io(#[source] std::io::Error),
}

fn io(e: std::io::Error) -> HeaderError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        HeaderError::Truncated
    } else {
        HeaderError::Io(e)
    }
}

/// Reads and checks a header; returns it and the target port.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<(TransportHeader, u16), HeaderError> {
    let mut preface = [0u8; PREFACE.len()];
    r.read_exact(&mut preface).await.map_err(io)?;
    if preface != PREFACE {
        return Err(HeaderError::Preface);
    }
    let len = r.read_u32().await.map_err(io)?;
    if len > MAX_LEN {
        return Err(HeaderError::TooLong(len));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await.map_err(io)?;
    let h =
        <TransportHeader as prost::Message>::decode(buf.as_slice()).map_err(HeaderError::Decode)?;
    let port = u16::try_from(h.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(HeaderError::BadPort(h.port))?;
    Ok((h, port))
}

/// The session protocol a header declares: HTTP/1 or HTTP/2, or None
/// (opaque, or a client that did not say).
pub fn declared(h: &TransportHeader) -> Option<Protocol> {
    match h.session_protocol.as_ref()?.kind.as_ref()? {
        session_protocol::Kind::Http1(_) => Some(Protocol::Http1),
        session_protocol::Kind::Http2(_) => Some(Protocol::Http2),
    }
}

/// The header field for a detected protocol (None for opaque).
fn session(p: Protocol) -> Option<SessionProtocol> {
    let kind = match p {
        Protocol::Http1 => session_protocol::Kind::Http1(Http1 {}),
        Protocol::Http2 => session_protocol::Kind::Http2(Http2 {}),
        Protocol::Opaque => return None,
    };
    Some(SessionProtocol { kind: Some(kind) })
}

/// Writes a header naming `port` and, for detected HTTP, the session
/// protocol (so the peer's inbound serves it as HTTP without detecting).
pub async fn write<W: AsyncWrite + Unpin>(
    w: &mut W,
    port: u16,
    name: &str,
    protocol: Protocol,
) -> std::io::Result<()> {
    let h = TransportHeader {
        port: i32::from(port),
        name: name.to_string(),
        session_protocol: session(protocol),
    };
    let body = prost::Message::encode_to_vec(&h);
    let mut out = Vec::with_capacity(PREFACE.len() + 4 + body.len());
    out.extend_from_slice(PREFACE);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    w.write_all(&out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip() {
        let mut buf = Vec::new();
        write(&mut buf, 8080, "", Protocol::Opaque).await.unwrap();
        buf.extend_from_slice(b"app bytes");
        let mut r = buf.as_slice();
        let (h, port) = read(&mut r).await.unwrap();
        assert_eq!(port, 8080);
        assert_eq!(h.session_protocol, None);
        assert_eq!(declared(&h), None);
        assert_eq!(r, b"app bytes");
        for p in [Protocol::Http1, Protocol::Http2] {
            let mut buf = Vec::new();
            write(&mut buf, 80, "", p).await.unwrap();
            let (h, _) = read(&mut buf.as_slice()).await.unwrap();
            assert_eq!(declared(&h), Some(p));
        }
    }

    #[tokio::test]
    async fn refuses_lies_and_truncation() {
        let mut full = Vec::new();
        write(&mut full, 8080, "", Protocol::Http1).await.unwrap();
        for cut in [0, 5, PREFACE.len(), PREFACE.len() + 2, full.len() - 1] {
            let mut r = &full[..cut];
            assert!(
                matches!(read(&mut r).await, Err(HeaderError::Truncated)),
                "cut at {cut}"
            );
        }
        let mut bad = full.clone();
        bad[0] = b'X';
        assert!(matches!(
            read(&mut bad.as_slice()).await,
            Err(HeaderError::Preface)
        ));
        let mut long = PREFACE.to_vec();
        long.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            read(&mut long.as_slice()).await,
            Err(HeaderError::TooLong(_))
        ));
        let mut garbage = PREFACE.to_vec();
        garbage.extend_from_slice(&3u32.to_be_bytes());
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(
            read(&mut garbage.as_slice()).await,
            Err(HeaderError::Decode(_))
        ));
        for port in [0, -1, 70000] {
            let body = prost::Message::encode_to_vec(&TransportHeader {
                port,
                name: String::new(),
                session_protocol: None,
            });
            let mut m = PREFACE.to_vec();
            m.extend_from_slice(&(body.len() as u32).to_be_bytes());
            m.extend_from_slice(&body);
            assert!(
                matches!(read(&mut m.as_slice()).await, Err(HeaderError::BadPort(_))),
                "port {port}"
            );
        }
    }
}
