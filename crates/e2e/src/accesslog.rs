//! Istio's default TEXT access log line, taken apart (reference/istio-api.md §3.1):
//!
//! ```text
//! [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS%
//! %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED%
//! %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
//! "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS%
//! %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%
//! ```

/// One access log line. Every field is the text as logged (`-` when unset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogEntry {
    pub raw: String,
    pub start_time: String,
    pub method: String,
    pub path: String,
    pub protocol: String,
    pub response_code: u16,
    pub response_flags: String,
    pub response_code_details: String,
    pub connection_termination_details: String,
    pub upstream_transport_failure_reason: String,
    pub bytes_received: String,
    pub bytes_sent: String,
    pub duration: String,
    pub upstream_service_time: String,
    pub x_forwarded_for: String,
    pub user_agent: String,
    pub request_id: String,
    pub authority: String,
    pub upstream_host: String,
    pub upstream_cluster: String,
    pub upstream_local_address: String,
    pub downstream_local_address: String,
    pub downstream_remote_address: String,
    pub requested_server_name: String,
    pub route_name: String,
}

impl AccessLogEntry {
    /// Parses one line; `None` if it is not a line in Istio's TEXT format.
    pub fn parse(line: &str) -> Option<AccessLogEntry> {
        let line = line.trim_end();
        if !line.starts_with('[') {
            return None;
        }
        let t = tokenize(line)?;
        if t.len() != 22 {
            return None;
        }
        let mut req = t[1].splitn(3, ' ');
        let method = req.next()?.to_string();
        let path = req.next()?.to_string();
        let protocol = req.next()?.to_string();
        Some(AccessLogEntry {
            raw: line.to_string(),
            start_time: t[0].clone(),
            method,
            path,
            protocol,
            response_code: t[2].parse().ok()?,
            response_flags: t[3].clone(),
            response_code_details: t[4].clone(),
            connection_termination_details: t[5].clone(),
            upstream_transport_failure_reason: t[6].clone(),
            bytes_received: t[7].clone(),
            bytes_sent: t[8].clone(),
            duration: t[9].clone(),
            upstream_service_time: t[10].clone(),
            x_forwarded_for: t[11].clone(),
            user_agent: t[12].clone(),
            request_id: t[13].clone(),
            authority: t[14].clone(),
            upstream_host: t[15].clone(),
            upstream_cluster: t[16].clone(),
            upstream_local_address: t[17].clone(),
            downstream_local_address: t[18].clone(),
            downstream_remote_address: t[19].clone(),
            requested_server_name: t[20].clone(),
            route_name: t[21].clone(),
        })
    }

    /// A TCP/TLS connection line (`"- - -" 0 …`).
    pub fn is_tcp(&self) -> bool {
        self.method == "-" && self.path == "-" && self.protocol == "-" && self.response_code == 0
    }

    /// `bytes_sent` as a number (0 when `-`).
    pub fn bytes_sent_n(&self) -> u64 {
        self.bytes_sent.parse().unwrap_or(0)
    }

    /// `bytes_received` as a number (0 when `-`).
    pub fn bytes_received_n(&self) -> u64 {
        self.bytes_received.parse().unwrap_or(0)
    }
}

/// Splits on single spaces, keeping `"…"` and `[…]` together (without the delimiters).
fn tokenize(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        // Only %START_TIME% is bracketed; later `[…]` are IPv6 addresses (`[fd00::1]:80`).
        let bracketed = out.is_empty().then(|| rest.strip_prefix('[')).flatten();
        let (tok, after) = if let Some(r) = bracketed {
            let end = r.find(']')?;
            (&r[..end], &r[end + 1..])
        } else if let Some(r) = rest.strip_prefix('"') {
            // A quoted field ends at a quote followed by a space or the end of the line.
            let mut end = None;
            for (i, _) in r.match_indices('"') {
                let next = r[i + 1..].chars().next();
                if next.is_none() || next == Some(' ') {
                    end = Some(i);
                    break;
                }
            }
            let end = end?;
            (&r[..end], &r[end + 1..])
        } else {
            match rest.find(' ') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            }
        };
        out.push(tok.to_string());
        rest = after.strip_prefix(' ').unwrap_or(after);
    }
    Some(out)
}

/// The JSON-encoded lines (`accessLogEncoding: JSON`) among `lines`: objects with a `response_code`.
pub fn parse_json_lines(lines: &[String]) -> Vec<serde_json::Map<String, serde_json::Value>> {
    lines
        .iter()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .filter_map(|v| match v {
            serde_json::Value::Object(m) if m.contains_key("response_code") => Some(m),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_http_line() {
        let l = r#"[2020-11-25T21:26:18.409Z] "GET /status/418 HTTP/1.1" 418 - via_upstream - "-" 0 135 4 4 "-" "curl/7.73.0-DEV" "84961386-6d84-929d-98bd-c5aee93b5c88" "httpbin:8000" "10.44.1.27:80" outbound|8000||httpbin.foo.svc.cluster.local 10.44.1.23:37652 10.0.45.184:8000 10.44.1.23:46520 - default"#;
        let e = AccessLogEntry::parse(l).expect("parses");
        assert_eq!(e.method, "GET");
        assert_eq!(e.path, "/status/418");
        assert_eq!(e.protocol, "HTTP/1.1");
        assert_eq!(e.response_code, 418);
        assert_eq!(e.response_flags, "-");
        assert_eq!(e.response_code_details, "via_upstream");
        assert_eq!(e.user_agent, "curl/7.73.0-DEV");
        assert_eq!(e.authority, "httpbin:8000");
        assert_eq!(e.upstream_host, "10.44.1.27:80");
        assert_eq!(
            e.upstream_cluster,
            "outbound|8000||httpbin.foo.svc.cluster.local"
        );
        assert_eq!(e.downstream_local_address, "10.0.45.184:8000");
        assert_eq!(e.requested_server_name, "-");
        assert_eq!(e.route_name, "default");
        assert!(!e.is_tcp());
    }

    #[test]
    fn parses_istio_tcp_lines() {
        let l = r#"[2021-01-01T00:00:00.000Z] "- - -" 0 UH - - "-" 0 0 7 - "-" "-" "-" "-" "-" BlackHoleCluster - 180.97.34.94:443 10.122.158.52:54192 - -"#;
        let e = AccessLogEntry::parse(l).expect("parses");
        assert!(e.is_tcp());
        assert_eq!(e.response_flags, "UH");
        assert_eq!(e.upstream_cluster, "BlackHoleCluster");
        assert_eq!(e.downstream_local_address, "180.97.34.94:443");
        let l = r#"[2021-01-01T00:00:00.000Z] "- - -" 0 - - - "-" 908 4986 99 - "-" "-" "-" "-" "36.25.253.87:443" outbound|443||www.tencent.com 10.122.158.52:54278 36.25.253.87:443 10.122.158.52:54276 www.tencent.com -"#;
        let e = AccessLogEntry::parse(l).expect("parses");
        assert_eq!(e.requested_server_name, "www.tencent.com");
        assert_eq!(e.bytes_received_n(), 908);
        assert_eq!(e.bytes_sent_n(), 4986);
    }

    #[test]
    fn user_agent_with_spaces() {
        let l = r#"[2021-01-01T00:00:00.000Z] "HEAD / HTTP/1.1" 502 - direct_response - "-" 0 0 0 - "-" "Mozilla/5.0 (X11; Linux)" "cb17" "www.baidu.com" "-" - - 180.97.34.94:80 10.122.158.52:48708 - block_all"#;
        let e = AccessLogEntry::parse(l).expect("parses");
        assert_eq!(e.user_agent, "Mozilla/5.0 (X11; Linux)");
        assert_eq!(e.route_name, "block_all");
        assert_eq!(e.upstream_cluster, "-");
    }

    #[test]
    fn ipv6_addresses_are_fields_not_timestamps() {
        let l = r#"[2026-01-01T00:00:00.000Z] "GET /get HTTP/1.1" 502 - direct_response - "-" 0 0 0 - "-" "curl/7.88.1" "7992" "[fd00::10]" "-" - - [fd00::10]:80 [fd00::2]:36306 - block_all"#;
        let e = AccessLogEntry::parse(l).expect("parses");
        assert_eq!(e.authority, "[fd00::10]");
        assert_eq!(e.downstream_local_address, "[fd00::10]:80");
        assert_eq!(e.downstream_remote_address, "[fd00::2]:36306");
        assert_eq!(e.route_name, "block_all");
    }

    #[test]
    fn rejects_other_lines() {
        assert!(AccessLogEntry::parse("2026-01-01T00:00:00Z INFO sluice: ready").is_none());
        assert!(AccessLogEntry::parse("[oops] short").is_none());
    }
}
