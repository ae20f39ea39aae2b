//! The fuzz seeds of the proxy's targets (fuzz/seeds/, see bench/README.md) replayed through the
//! same functions: protocol detection, ClientHello parsing and access-log formats. Each must give
//! its answer (or a clean error) without panicking, and inputs fuzzing finds to crash go here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Method};
use sluice_proxy::detect::{client_hello_sni, detect, with_client_hello, Detected};
use sluice_proxy::telemetry::accesslog::{AccessLogEncoding, AccessLogFormat, AccessLogRecord};

fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = seed_dir(target).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fuzz seed {}: {e}", path.display()))
}

fn seed_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target)
}

/// Every seed of a target, by name; fails when the directory is missing or empty.
fn all_seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = seed_dir(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz seeds missing at {}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("seed entry").path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into();
            (name, std::fs::read(&path).expect("read seed"))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

#[tokio::test]
async fn detect_seeds_are_classified_whatever_the_segmentation() {
    let expected = [
        ("http1", Detected::Http1),
        ("http1-byte-at-a-time", Detected::Http1),
        ("h2", Detected::Http2),
        (
            "tls-curl",
            Detected::Tls {
                sni: Some("svc.fuzz".into()),
            },
        ),
        (
            "tls-split",
            Detected::Tls {
                sni: Some("www.google.com".into()),
            },
        ),
        ("tcp", Detected::Tcp),
        // A record header promising more than the client sends before closing: opaque TCP.
        ("tls-short", Detected::Tcp),
    ];
    for (name, want) in expected {
        // The fuzz target's layout: the first byte is the read size, the rest the client's bytes.
        let data = seed("detect", name);
        let bytes = &data[1..];
        let mut reader = bytes;
        let (prefix, got) = detect(&mut reader).await.expect("in-memory read");
        assert_eq!(got, want, "{name}");
        assert!(
            bytes.starts_with(&prefix),
            "{name}: prefix is what was read"
        );
    }
    for (name, data) in all_seeds("detect") {
        let mut reader = data.get(1..).unwrap_or_default();
        assert!(detect(&mut reader).await.is_ok(), "{name}");
    }
}

#[test]
fn client_hello_seeds_give_their_server_names() {
    let expected = [
        ("hello-curl", Some("svc.fuzz")),
        ("hello-curl-tls12", Some("api.example.com")),
        ("hello-openssl", Some("www.google.com")),
        ("hello-nosni", None),
    ];
    for (name, sni) in expected {
        let record = seed("client_hello", name);
        assert_eq!(client_hello_sni(&record).as_deref(), sni, "{name}");
        let parsed = with_client_hello(&record, |h| h.cipher_suites().len());
        assert!(
            parsed.is_some_and(|n| n > 0),
            "{name}: a complete ClientHello"
        );
        // Cut anywhere, it is not a ClientHello, and nothing panics.
        for cut in [0, 1, 5, record.len() / 2, record.len() - 1] {
            assert_eq!(
                with_client_hello(&record[..cut], |_| ()),
                None,
                "{name}@{cut}"
            );
        }
    }
}

fn full_record() -> AccessLogRecord {
    let mut rec = AccessLogRecord::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    rec.method = Some(Method::POST);
    rec.path = Some("/p/ä?q=1".into());
    rec.protocol = Some("HTTP/1.1");
    rec.response_code = 503;
    rec.route_name = Some(Arc::from("route-é"));
    rec.user_agent = Some(HeaderValue::from_bytes(b"curl/8 \xff\"").expect("header"));
    rec.upstream_host = Some("127.0.0.1:1".parse().expect("addr"));
    let mut req = HeaderMap::new();
    req.insert(
        "x-bin",
        HeaderValue::from_bytes(b"\x80\x81").expect("header"),
    );
    rec.request_headers = Some(req);
    rec.response_headers = Some(HeaderMap::new());
    rec
}

#[test]
fn accesslog_format_seeds_compile_or_are_refused_and_json_lines_are_json() {
    let mut compiled = 0;
    for (name, data) in all_seeds("accesslog_format") {
        // The fuzz target's layout: the first byte's low bit picks TEXT or JSON.
        let encoding = if data[0] & 1 == 0 {
            AccessLogEncoding::Text
        } else {
            AccessLogEncoding::Json
        };
        let format = std::str::from_utf8(&data[1..]).expect("seed formats are text");
        let parsed = AccessLogFormat::parse(Some(format), encoding);
        let bad = name.ends_with("-bad") || name.ends_with("-not-object");
        assert_eq!(parsed.is_err(), bad, "{name}: {:?}", parsed.err());
        let Ok(parsed) = parsed else { continue };
        compiled += 1;
        for rec in [full_record(), AccessLogRecord::new(SystemTime::UNIX_EPOCH)] {
            let line = parsed.render_to_string(&rec);
            let body = line.strip_suffix('\n').expect("a line ends with a newline");
            if encoding == AccessLogEncoding::Json {
                serde_json::from_str::<serde_json::Value>(body)
                    .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {body}"));
            }
        }
    }
    assert!(compiled >= 4, "the good seeds compiled");
}
