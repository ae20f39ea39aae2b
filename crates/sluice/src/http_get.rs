//! A plain HTTP/1.1 GET over a blocking `TcpStream`, shared by the subcommands that read a local
//! proxy's admin or stats port (`proxy-config`, `suggest`): those answers are local, small and
//! immediate, so no async client is needed.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context as _};

/// How long connecting to, writing to and reading from the server may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Which step of [`exchange`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Connect,
    Send,
    Receive,
}

/// Connects to `addr`, writes `request` in one write (a server may answer, and close, after the
/// first segment it reads) and reads the answer until the server closes.
pub fn exchange(addr: &SocketAddr, request: &str) -> Result<Vec<u8>, (Step, io::Error)> {
    let mut stream = TcpStream::connect_timeout(addr, TIMEOUT).map_err(|e| (Step::Connect, e))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| (Step::Connect, e))?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(|e| (Step::Connect, e))?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| (Step::Send, e))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| (Step::Receive, e))?;
    Ok(raw)
}

/// Status and body of a raw HTTP/1.1 response (Content-Length, chunked, or read to close).
pub fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the answer is not HTTP (no end of headers)")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut body = &raw[split + 4..];
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("the answer is not HTTP (status line {status_line:?})"))?;
    let mut chunked = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "content-length" {
            if let Ok(n) = v.parse::<usize>() {
                body = &body[..n.min(body.len())];
            }
        } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The status line of a raw HTTP/1.1 response (its first line), for error messages.
pub fn status_line(raw: &[u8]) -> String {
    let end = raw
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Decodes a `Transfer-Encoding: chunked` body.
pub fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunked body")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            bail!("truncated chunked body");
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            status_line(b"HTTP/1.1 404 Not Found\r\n\r\n"),
            "HTTP/1.1 404 Not Found"
        );
    }
}
