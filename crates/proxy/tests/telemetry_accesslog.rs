//! Access log: Istio's exact default lines, JSON typing, custom formats, and the file writer.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method};
use sluice_proxy::telemetry::accesslog::{
    format_start_time, ISTIO_DEFAULT_JSON_KEYS, ISTIO_DEFAULT_TEXT_FORMAT,
};
use sluice_proxy::telemetry::{
    protocol_name, AccessLogConfig, AccessLogEncoding, AccessLogError, AccessLogFormat,
    AccessLogRecord, AccessLogger, FormatError,
};

/// 2020-11-25T21:26:18.409Z, the start time of the Istio docs example.
fn istio_doc_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_606_339_578_409)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn hv(s: &'static str) -> Option<HeaderValue> {
    Some(HeaderValue::from_static(s))
}

/// The outbound (client sidecar) request of Istio's access-log task.
fn http_outbound_record() -> AccessLogRecord {
    let mut r = AccessLogRecord::new(istio_doc_time());
    r.method = Some(Method::GET);
    r.path = Some("/status/418".into());
    r.protocol = Some(protocol_name(http::Version::HTTP_11));
    r.response_code = 418;
    r.response_flags = Cow::Borrowed("-");
    r.response_code_details = Some("via_upstream".into());
    r.bytes_received = 0;
    r.bytes_sent = 135;
    r.duration = Duration::from_micros(4_700); // printed truncated to whole ms
    r.upstream_service_time = Some(4);
    r.user_agent = hv("curl/7.73.0-DEV");
    r.request_id = hv("84961386-6d84-929d-98bd-c5aee93b5c88");
    r.authority = hv("httpbin:8000");
    r.upstream_host = Some(addr("10.44.1.27:80"));
    r.upstream_cluster = Some(Arc::from("outbound|8000||httpbin.foo.svc.cluster.local"));
    r.upstream_local_address = Some(addr("10.44.1.23:37652"));
    r.downstream_local_address = Some(addr("10.0.45.184:8000"));
    r.downstream_remote_address = Some(addr("10.44.1.23:46520"));
    r.route_name = Some(Arc::from("default"));
    r
}

fn blackhole_tcp_record() -> AccessLogRecord {
    let mut r = AccessLogRecord::new(istio_doc_time());
    r.response_flags = Cow::Borrowed("UH");
    r.duration = Duration::from_millis(7);
    r.upstream_cluster = Some(Arc::from("BlackHoleCluster"));
    r.downstream_local_address = Some(addr("180.97.34.94:443"));
    r.downstream_remote_address = Some(addr("10.122.158.52:54192"));
    r
}

fn default_text() -> AccessLogFormat {
    AccessLogFormat::parse(None, AccessLogEncoding::Text).expect("default TEXT format")
}

fn default_json() -> AccessLogFormat {
    AccessLogFormat::parse(None, AccessLogEncoding::Json).expect("default JSON format")
}

#[test]
fn default_text_format_is_istios() {
    assert!(ISTIO_DEFAULT_TEXT_FORMAT.contains("%UPSTREAM_CLUSTER_RAW%"));
    assert_eq!(
        format_start_time(istio_doc_time()),
        "2020-11-25T21:26:18.409Z"
    );
    // An empty custom format is the same as none.
    let a = default_text().render_to_string(&http_outbound_record());
    let b = AccessLogFormat::parse(Some(""), AccessLogEncoding::Text)
        .unwrap()
        .render_to_string(&http_outbound_record());
    assert_eq!(a, b);
}

#[test]
fn http_outbound_line_matches_istio_docs() {
    let line = default_text().render_to_string(&http_outbound_record());
    assert_eq!(
        line,
        "[2020-11-25T21:26:18.409Z] \"GET /status/418 HTTP/1.1\" 418 - via_upstream - \"-\" 0 135 4 4 \"-\" \"curl/7.73.0-DEV\" \"84961386-6d84-929d-98bd-c5aee93b5c88\" \"httpbin:8000\" \"10.44.1.27:80\" outbound|8000||httpbin.foo.svc.cluster.local 10.44.1.23:37652 10.0.45.184:8000 10.44.1.23:46520 - default\n"
    );
}

#[test]
fn http_inbound_line_with_sni_matches_istio_docs() {
    let mut r = http_outbound_record();
    r.duration = Duration::from_millis(3);
    r.upstream_service_time = Some(1);
    r.upstream_host = Some(addr("127.0.0.1:80"));
    r.upstream_cluster = Some(Arc::from("inbound|8000||"));
    r.upstream_local_address = Some(addr("127.0.0.1:41854"));
    r.downstream_local_address = Some(addr("10.44.1.27:80"));
    r.downstream_remote_address = Some(addr("10.44.1.23:37652"));
    r.requested_server_name = Some(Arc::from("outbound_.8000_._.httpbin.foo.svc.cluster.local"));
    assert_eq!(
        default_text().render_to_string(&r),
        "[2020-11-25T21:26:18.409Z] \"GET /status/418 HTTP/1.1\" 418 - via_upstream - \"-\" 0 135 3 1 \"-\" \"curl/7.73.0-DEV\" \"84961386-6d84-929d-98bd-c5aee93b5c88\" \"httpbin:8000\" \"127.0.0.1:80\" inbound|8000|| 127.0.0.1:41854 10.44.1.27:80 10.44.1.23:37652 outbound_.8000_._.httpbin.foo.svc.cluster.local default\n"
    );
}

#[test]
fn registry_only_http_502_line() {
    let mut r = AccessLogRecord::new(istio_doc_time());
    r.method = Some(Method::HEAD);
    r.path = Some("/".into());
    r.protocol = Some("HTTP/1.1");
    r.response_code = 502;
    r.response_code_details = Some("direct_response".into());
    r.user_agent = hv("curl/7.81.0-DEV");
    r.request_id = hv("cb171c15-8ef7-9c4c-a4f1-1e2e05cfd2ea");
    r.authority = hv("www.baidu.com");
    r.downstream_local_address = Some(addr("180.97.34.94:80"));
    r.downstream_remote_address = Some(addr("10.122.158.52:48708"));
    r.route_name = Some(Arc::from("block_all"));
    assert_eq!(
        default_text().render_to_string(&r),
        "[2020-11-25T21:26:18.409Z] \"HEAD / HTTP/1.1\" 502 - direct_response - \"-\" 0 0 0 - \"-\" \"curl/7.81.0-DEV\" \"cb171c15-8ef7-9c4c-a4f1-1e2e05cfd2ea\" \"www.baidu.com\" \"-\" - - 180.97.34.94:80 10.122.158.52:48708 - block_all\n"
    );
}

#[test]
fn blackhole_tcp_line() {
    assert_eq!(
        default_text().render_to_string(&blackhole_tcp_record()),
        "[2020-11-25T21:26:18.409Z] \"- - -\" 0 UH - - \"-\" 0 0 7 - \"-\" \"-\" \"-\" \"-\" \"-\" BlackHoleCluster - 180.97.34.94:443 10.122.158.52:54192 - -\n"
    );
}

#[test]
fn tls_passthrough_tcp_line_shows_sni() {
    let mut r = AccessLogRecord::new(istio_doc_time());
    r.bytes_received = 908;
    r.bytes_sent = 4986;
    r.duration = Duration::from_millis(99);
    r.upstream_host = Some(addr("36.25.253.87:443"));
    r.upstream_cluster = Some(Arc::from("outbound|443||www.tencent.com"));
    r.upstream_local_address = Some(addr("10.122.158.52:54278"));
    r.downstream_local_address = Some(addr("36.25.253.87:443"));
    r.downstream_remote_address = Some(addr("10.122.158.52:54276"));
    r.requested_server_name = Some(Arc::from("www.tencent.com"));
    // A TCP record ignores request fields even if something set them.
    r.user_agent = hv("should-not-print");
    r.response_flags = Cow::Borrowed("");
    assert_eq!(
        default_text().render_to_string(&r),
        "[2020-11-25T21:26:18.409Z] \"- - -\" 0 - - - \"-\" 908 4986 99 - \"-\" \"-\" \"-\" \"-\" \"36.25.253.87:443\" outbound|443||www.tencent.com 10.122.158.52:54278 36.25.253.87:443 10.122.158.52:54276 www.tencent.com -\n"
    );
}

fn parse_json_line(line: &str) -> serde_json::Map<String, serde_json::Value> {
    assert!(line.ends_with('\n'), "JSON line must end with a newline");
    assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
    match serde_json::from_str(line.trim_end()).expect("valid JSON") {
        serde_json::Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

#[test]
fn default_json_keys_order_and_types() {
    let line = default_json().render_to_string(&http_outbound_record());
    let obj = parse_json_line(&line);
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    let expected: Vec<&str> = ISTIO_DEFAULT_JSON_KEYS.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, expected);
    use serde_json::json;
    assert_eq!(obj["start_time"], json!("2020-11-25T21:26:18.409Z"));
    assert_eq!(obj["route_name"], json!("default"));
    assert_eq!(obj["method"], json!("GET"));
    assert_eq!(obj["path"], json!("/status/418"));
    assert_eq!(obj["protocol"], json!("HTTP/1.1"));
    assert_eq!(obj["response_code"], json!(418));
    assert_eq!(obj["response_flags"], json!("-"));
    assert_eq!(obj["response_code_details"], json!("via_upstream"));
    assert_eq!(obj["connection_termination_details"], json!(null));
    assert_eq!(obj["bytes_received"], json!(0));
    assert_eq!(obj["bytes_sent"], json!(135));
    assert_eq!(obj["duration"], json!(4));
    // Envoy takes it from a response header, so it is a string.
    assert_eq!(obj["upstream_service_time"], json!("4"));
    assert_eq!(obj["x_forwarded_for"], json!(null));
    assert_eq!(obj["user_agent"], json!("curl/7.73.0-DEV"));
    assert_eq!(obj["authority"], json!("httpbin:8000"));
    assert_eq!(obj["upstream_host"], json!("10.44.1.27:80"));
    assert_eq!(
        obj["upstream_cluster"],
        json!("outbound|8000||httpbin.foo.svc.cluster.local")
    );
    assert_eq!(obj["downstream_remote_address"], json!("10.44.1.23:46520"));
    assert_eq!(obj["requested_server_name"], json!(null));
    assert_eq!(obj["upstream_transport_failure_reason"], json!(null));
}

#[test]
fn default_json_tcp_record() {
    let obj = parse_json_line(&default_json().render_to_string(&blackhole_tcp_record()));
    use serde_json::json;
    assert_eq!(obj["method"], json!(null));
    assert_eq!(obj["path"], json!(null));
    assert_eq!(obj["protocol"], json!(null));
    assert_eq!(obj["response_code"], json!(0));
    assert_eq!(obj["response_flags"], json!("UH"));
    assert_eq!(obj["duration"], json!(7));
    assert_eq!(obj["upstream_host"], json!(null));
    assert_eq!(obj["upstream_cluster"], json!("BlackHoleCluster"));
    assert_eq!(obj["upstream_service_time"], json!(null));
}

#[test]
fn custom_text_format() {
    let fmt = AccessLogFormat::parse(
        Some("%START_TIME(%Y-%m-%dT%H:%M:%SZ)% %START_TIME(%s.%3f)% %REQ(:METHOD)% %REQ(X-CUSTOM?USER-AGENT):4% %REQ(X-CUSTOM)% %RESP(CONTENT-TYPE)% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_CLUSTER% %ROUTE_NAME% 100%% %DURATION%ms"),
        AccessLogEncoding::Text,
    )
    .expect("custom format");
    assert!(fmt.needs_request_headers());
    assert!(fmt.needs_response_headers());
    let mut r = http_outbound_record();
    let line = fmt.render_to_string(&r);
    assert_eq!(
        line,
        "2020-11-25T21:26:18Z 1606339578.409 GET curl - - 10.44.1.23 outbound|8000||httpbin.foo.svc.cluster.local default 100% 4ms\n"
    );
    let mut req = HeaderMap::new();
    req.insert("x-custom", HeaderValue::from_static("custom-value"));
    let mut resp = HeaderMap::new();
    resp.insert("content-type", HeaderValue::from_static("text/plain"));
    r.request_headers = Some(req);
    r.response_headers = Some(resp);
    assert_eq!(
        fmt.render_to_string(&r),
        "2020-11-25T21:26:18Z 1606339578.409 GET cust custom-value text/plain 10.44.1.23 outbound|8000||httpbin.foo.svc.cluster.local default 100% 4ms\n"
    );
    // The default format needs no header maps.
    assert!(!default_text().needs_request_headers());
    assert!(!default_text().needs_response_headers());
    // A format that already ends with a newline gets no second one.
    let fmt = AccessLogFormat::parse(Some("%RESPONSE_CODE%\n"), AccessLogEncoding::Text).unwrap();
    assert_eq!(fmt.render_to_string(&r), "418\n");
}

#[test]
fn custom_json_format() {
    let fmt = AccessLogFormat::parse(
        Some(r#"{"code":"%RESPONSE_CODE%","summary":"%REQ(:METHOD)% %RESPONSE_CODE% sni=%REQUESTED_SERVER_NAME%","nested":{"ua":"%REQ(USER-AGENT):4%","host":"%HOSTNAME%"},"constant":5,"flag":true,"quote":"say \"%ROUTE_NAME%\""}"#),
        AccessLogEncoding::Json,
    )
    .expect("custom JSON format");
    let obj = parse_json_line(&fmt.render_to_string(&http_outbound_record()));
    use serde_json::json;
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["code", "summary", "nested", "constant", "flag", "quote"]
    );
    assert_eq!(obj["code"], json!(418));
    assert_eq!(obj["summary"], json!("GET 418 sni=-"));
    assert_eq!(obj["nested"]["ua"], json!("curl"));
    assert!(obj["nested"]["host"].is_string() || obj["nested"]["host"].is_null());
    assert_eq!(obj["constant"], json!(5));
    assert_eq!(obj["flag"], json!(true));
    assert_eq!(obj["quote"], json!("say \"default\""));
}

#[test]
fn unknown_operator_and_bad_formats_are_errors() {
    let err = AccessLogFormat::parse(
        Some("[%START_TIME%] %NOT_AN_OPERATOR% %DURATION%"),
        AccessLogEncoding::Text,
    )
    .unwrap_err();
    assert_eq!(
        err,
        FormatError::UnknownOperator {
            operator: "NOT_AN_OPERATOR".into()
        }
    );
    assert!(err.to_string().contains("%NOT_AN_OPERATOR%"), "{err}");

    let err =
        AccessLogFormat::parse(Some(r#"{"a":"%BOGUS%"}"#), AccessLogEncoding::Json).unwrap_err();
    assert!(err.to_string().contains("BOGUS"), "{err}");

    for bad in ["[1,2]", "not json", r#""%DURATION%""#] {
        assert!(
            matches!(
                AccessLogFormat::parse(Some(bad), AccessLogEncoding::Json),
                Err(FormatError::Json(_))
            ),
            "{bad}"
        );
    }
    for bad in [
        "50% off",
        "%DURATION",
        "%REQ%",
        "%DURATION(x)%",
        "%START_TIME(%Q)%",
    ] {
        assert!(
            matches!(
                AccessLogFormat::parse(Some(bad), AccessLogEncoding::Text),
                Err(FormatError::Syntax { .. })
            ),
            "{bad}"
        );
    }
    let config = AccessLogConfig {
        format: Some("%NOPE%".into()),
        ..AccessLogConfig::default()
    };
    assert!(matches!(
        AccessLogger::new(config),
        Err(AccessLogError::Format(FormatError::UnknownOperator { .. }))
    ));
}

fn file_config(path: &std::path::Path, encoding: AccessLogEncoding) -> AccessLogConfig {
    AccessLogConfig {
        path: Some(path.to_path_buf()),
        encoding,
        format: None,
    }
}

#[test]
fn default_config_is_stdout_text() {
    let c = AccessLogConfig::default();
    assert_eq!(c.path.as_deref(), Some(std::path::Path::new("/dev/stdout")));
    assert_eq!(c.encoding, AccessLogEncoding::Text);
    assert_eq!(c.format, None);
    assert_eq!(
        "JSON".parse::<AccessLogEncoding>(),
        Ok(AccessLogEncoding::Json)
    );
    assert_eq!("".parse::<AccessLogEncoding>(), Ok(AccessLogEncoding::Text));
    assert!("XML".parse::<AccessLogEncoding>().is_err());
}

#[test]
fn file_sink_appends_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    std::fs::write(&path, "existing line\n").unwrap();
    let logger = AccessLogger::new(file_config(&path, AccessLogEncoding::Text)).unwrap();
    assert!(logger.is_enabled());
    let clone = logger.clone();
    logger.log(http_outbound_record());
    clone.log(blackhole_tcp_record());
    assert!(logger.flush(Duration::from_secs(5)));
    let content = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = content.lines().collect();
    assert_eq!(lines.len(), 3, "{content}");
    assert_eq!(lines[0], "existing line");
    assert!(lines[1].starts_with("[2020-11-25T21:26:18.409Z] \"GET /status/418 HTTP/1.1\" 418"));
    assert!(lines[2].contains("BlackHoleCluster"));
    assert_eq!(logger.dropped(), 0);
}

#[test]
fn unopenable_path_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("access.log");
    match AccessLogger::new(file_config(&path, AccessLogEncoding::Text)) {
        Err(e @ AccessLogError::Open { .. }) => {
            assert!(e.to_string().contains("no-such-dir"), "{e}")
        }
        other => panic!("expected an open error, got {other:?}"),
    }
}

#[test]
fn reconfigure_switches_text_to_json_and_paths() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.log");
    let second = dir.path().join("second.log");
    let logger = AccessLogger::new(file_config(&first, AccessLogEncoding::Text)).unwrap();
    logger.log(http_outbound_record());

    logger
        .reconfigure(file_config(&first, AccessLogEncoding::Json))
        .unwrap();
    logger.log(http_outbound_record());

    // A bad format is refused and the JSON configuration stays.
    let bad = AccessLogConfig {
        format: Some("%WHAT%".into()),
        ..file_config(&first, AccessLogEncoding::Text)
    };
    assert!(logger.reconfigure(bad).is_err());
    assert_eq!(logger.config().encoding, AccessLogEncoding::Json);
    logger.log(blackhole_tcp_record());
    assert!(logger.flush(Duration::from_secs(5)));

    let content = std::fs::read_to_string(&first).unwrap();
    let lines: Vec<&str> = content.lines().collect();
    assert_eq!(lines.len(), 3, "{content}");
    assert!(lines[0].starts_with("[2020-11-25T21:26:18.409Z] \"GET"));
    assert_eq!(
        parse_json_line(&format!("{}\n", lines[1]))["response_code"],
        418
    );
    assert_eq!(
        parse_json_line(&format!("{}\n", lines[2]))["response_code"],
        0
    );

    // Moving to another file: new lines go there.
    logger
        .reconfigure(AccessLogConfig {
            path: Some(second.clone()),
            encoding: AccessLogEncoding::Text,
            format: Some("%RESPONSE_CODE% %UPSTREAM_CLUSTER%".into()),
        })
        .unwrap();
    logger.log(http_outbound_record());
    assert!(logger.flush(Duration::from_secs(5)));
    assert_eq!(
        std::fs::read_to_string(&second).unwrap(),
        "418 outbound|8000||httpbin.foo.svc.cluster.local\n"
    );
    assert_eq!(std::fs::read_to_string(&first).unwrap().lines().count(), 3);

    // Off: nothing is written anywhere.
    logger.reconfigure(AccessLogConfig::off()).unwrap();
    assert!(!logger.is_enabled());
    logger.log(http_outbound_record());
    assert!(logger.flush(Duration::from_secs(5)));
    assert_eq!(std::fs::read_to_string(&second).unwrap().lines().count(), 1);
}

/// A writer stuck on a pipe nobody reads must not block `log`: lines are dropped and counted.
#[test]
fn full_queue_drops_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("prerequisite missing: the mkfifo command (coreutils)");
    assert!(status.success(), "mkfifo failed");
    // Open the read end without ever reading, so the writer's open succeeds and its writes then stall.
    use std::os::unix::fs::OpenOptionsExt;
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let logger = AccessLogger::new(file_config(&fifo, AccessLogEncoding::Text)).unwrap();
    let started = std::time::Instant::now();
    for _ in 0..30_000 {
        logger.log(http_outbound_record());
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "log() must not block"
    );
    assert!(logger.dropped() > 0, "expected dropped lines");
    let counter = logger.dropped_counter();
    assert_eq!(counter.get(), logger.dropped());
    // Closing the reader unblocks the writer (EPIPE), which then drains and counts the rest.
    drop(reader);
    assert!(logger.flush(Duration::from_secs(10)));
}
