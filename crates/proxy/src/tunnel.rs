//! DestinationRule `tunnel`: a TCP or TLS stream carried to its destination inside an HTTP/1.1
//! CONNECT through the cluster's endpoint (an HTTP proxy), as Envoy's `tcp_proxy`
//! `tunneling_config` does for Istio. The handshake runs over the upstream connection as it is
//! (plaintext, or the mesh's mutual TLS to an egress gateway); once the proxy answers 2xx, the
//! stream's bytes follow unchanged.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The most a CONNECT response head may take: an HTTP proxy's answer is a status line and a few
/// headers; anything longer is not one.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Why a tunnel could not be opened, as the access log's upstream transport failure reason says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelError {
    /// The proxy answered with a status other than 2xx.
    Refused(u16),
    /// The answer was not an HTTP/1.x response head, or was too long.
    Malformed,
    /// The proxy closed the connection or the connection failed before answering.
    Closed,
    /// No answer within the connect timeout.
    Timeout,
}

impl TunnelError {
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%` for this failure.
    pub fn reason(&self) -> String {
        match self {
            TunnelError::Refused(status) => format!("tunnel_connect_refused{{{status}}}"),
            TunnelError::Malformed => "tunnel_connect_malformed_response".into(),
            TunnelError::Closed => "tunnel_connect_closed".into(),
            TunnelError::Timeout => "tunnel_connect_timeout".into(),
        }
    }
}

/// Sends `CONNECT authority HTTP/1.1` on `io` and waits (at most `timeout`) for a 2xx answer.
/// The response head is read byte by byte, so that nothing the far end sends after it (a
/// server-first protocol's greeting) is taken from the stream.
pub async fn open<S>(io: &mut S, authority: &str, timeout: Duration) -> Result<(), TunnelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    let handshake = async {
        io.write_all(request.as_bytes())
            .await
            .map_err(|_| TunnelError::Closed)?;
        io.flush().await.map_err(|_| TunnelError::Closed)?;
        let mut head = Vec::with_capacity(256);
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_RESPONSE_HEAD {
                return Err(TunnelError::Malformed);
            }
            match io.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return Err(TunnelError::Closed),
            }
        }
        status_of(&head)
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(200..=299)) => Ok(()),
        Ok(Ok(status)) => Err(TunnelError::Refused(status)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(TunnelError::Timeout),
    }
}

/// The status of an HTTP/1.x response head.
fn status_of(head: &[u8]) -> Result<u16, TunnelError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => response.code.ok_or(TunnelError::Malformed),
        _ => Err(TunnelError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_head_gives_its_status_and_garbage_is_malformed() {
        assert_eq!(
            status_of(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Ok(200)
        );
        assert_eq!(
            status_of(
                b"HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n"
            ),
            Ok(407)
        );
        assert_eq!(
            status_of(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(TunnelError::Malformed)
        );
    }

    #[tokio::test]
    async fn the_stream_after_the_answer_is_left_to_the_caller() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let far_end = tokio::spawn(async move {
            let mut req = vec![0u8; 64];
            let n = server.read(&mut req).await.unwrap();
            let req = String::from_utf8_lossy(&req[..n]).into_owned();
            server
                .write_all(b"HTTP/1.1 200 OK\r\n\r\nSSH-2.0-greeting")
                .await
                .unwrap();
            req
        });
        open(&mut client, "example.com:22", Duration::from_secs(5))
            .await
            .unwrap();
        let mut greeting = [0u8; 16];
        client.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"SSH-2.0-greeting");
        assert_eq!(
            far_end.await.unwrap(),
            "CONNECT example.com:22 HTTP/1.1\r\nHost: example.com:22\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_refusal_an_endless_head_and_silence_fail_the_tunnel() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut req = [0u8; 256];
            let _ = server.read(&mut req).await;
            let _ = server
                .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                .await;
            std::future::pending::<()>().await;
        });
        assert_eq!(
            open(&mut client, "a:1", Duration::from_secs(5)).await,
            Err(TunnelError::Refused(403))
        );

        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut req = [0u8; 256];
            let _ = server.read(&mut req).await;
            let _ = server.write_all(b"HTTP/1.1 200 OK\r\n").await;
            let _ = server.write_all(&[b'x'; MAX_RESPONSE_HEAD]).await;
            std::future::pending::<()>().await;
        });
        assert_eq!(
            open(&mut client, "a:1", Duration::from_secs(5)).await,
            Err(TunnelError::Malformed)
        );

        let (mut client, _server) = tokio::io::duplex(1024);
        assert_eq!(
            open(&mut client, "a:1", Duration::from_millis(100)).await,
            Err(TunnelError::Timeout)
        );
    }
}
