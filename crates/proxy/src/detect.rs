//! Protocol detection on the first bytes a client sends: TLS ClientHello (with its SNI),
//! HTTP/2 prior knowledge, HTTP/1.x, or opaque TCP.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long to wait for a client's first bytes before treating the connection as opaque TCP.
/// Server-first protocols (MySQL, SMTP) send nothing; declaring their port TCP skips the wait.
pub const DETECTION_TIMEOUT: Duration = Duration::from_secs(1);

/// Most bytes read while looking for a complete ClientHello.
const MAX_PEEK: usize = 16 * 1024;

/// What the client speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// A TLS ClientHello, with the server name it asks for.
    Tls {
        sni: Option<String>,
    },
    Http1,
    Http2,
    Tcp,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    if buf[0] == 0x16 {
        // TLS handshake record: wait for the whole ClientHello record.
        if buf.len() < 5 {
            return None;
        }
        let record_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
        if buf.len() < 5 + record_len && buf.len() < MAX_PEEK {
            return None;
        }
        return Some(Detected::Tls {
            sni: client_hello_sni(buf),
        });
    }
    if H2_PREFACE.starts_with(&buf[..buf.len().min(H2_PREFACE.len())]) {
        return if buf.len() >= H2_PREFACE.len() {
            Some(Detected::Http2)
        } else {
            None
        };
    }
    for m in METHODS {
        if buf.len() >= m.len() {
            if buf.starts_with(m) {
                return Some(Detected::Http1);
            }
        } else if m.starts_with(buf) {
            return None;
        }
    }
    Some(Detected::Tcp)
}

/// Reads the first bytes of a connection and classifies them. Returns the bytes read (to replay)
/// and what they are; a client that sends nothing within [`DETECTION_TIMEOUT`] is TCP.
pub async fn detect<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<(Bytes, Detected)> {
    let mut buf = BytesMut::with_capacity(4096);
    let deadline = tokio::time::Instant::now() + DETECTION_TIMEOUT;
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await;
        match read {
            Err(_) => return Ok((buf.freeze(), Detected::Tcp)),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => {
                let d = classify(&buf).unwrap_or(Detected::Tcp);
                return Ok((buf.freeze(), d));
            }
            Ok(Ok(_)) => {
                if let Some(d) = classify(&buf) {
                    return Ok((buf.freeze(), d));
                }
                if buf.len() >= MAX_PEEK {
                    return Ok((buf.freeze(), Detected::Tcp));
                }
            }
        }
    }
}

/// The SNI of a ClientHello, parsed by rustls without terminating anything.
pub fn client_hello_sni(record: &[u8]) -> Option<String> {
    with_client_hello(record, |hello| hello.server_name().map(str::to_string)).flatten()
}

/// Parses the ClientHello at the start of `record` with rustls (without terminating anything)
/// and hands it to `f`; `None` when the bytes are not a complete ClientHello.
pub fn with_client_hello<R>(
    record: &[u8],
    f: impl FnOnce(&rustls::server::ClientHello<'_>) -> R,
) -> Option<R> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rd = record;
    while !rd.is_empty() {
        match acceptor.read_tls(&mut rd) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Some(f(&accepted.client_hello())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Detected::Tcp));
        assert_eq!(classify(&[0x16, 0x03, 0x01]), None);
    }
}
