//! Rendering a record with a compiled format: each operator's value, then TEXT (`-` for unset,
//! cut to a maximum length) or JSON (typed values, escaped strings).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::format::{JsonField, JsonNode, Op, ReqField, RespField, Segment};
use super::time::TimeFormat;
use super::AccessLogRecord;

/// A value produced by an operator, before encoding.
pub(super) enum Val<'a> {
    Unset,
    Str(&'a str),
    Bytes(&'a [u8]),
    /// A number: a JSON number in JSON mode.
    Num(u64),
    /// A number that Envoy takes from a header, so JSON shows it as a string.
    NumStr(u64),
    Addr(SocketAddr),
    Ip(IpAddr),
    Time(SystemTime, &'a TimeFormat),
}
impl Op {
    pub(super) fn eval<'a>(&'a self, rec: &'a AccessLogRecord) -> Val<'a> {
        fn opt_str<'a>(v: &'a Option<impl AsRef<str>>) -> Val<'a> {
            match v {
                Some(s) if !s.as_ref().is_empty() => Val::Str(s.as_ref()),
                _ => Val::Unset,
            }
        }
        match self {
            Op::StartTime(f) => Val::Time(rec.start_time, f),
            Op::Req(a, b) => {
                if rec.is_tcp() {
                    return Val::Unset;
                }
                match eval_req(a, rec) {
                    Val::Unset => b.as_ref().map_or(Val::Unset, |b| eval_req(b, rec)),
                    v => v,
                }
            }
            Op::Resp(f) => {
                if rec.is_tcp() {
                    return Val::Unset;
                }
                match f {
                    RespField::UpstreamServiceTime => {
                        rec.upstream_service_time.map_or(Val::Unset, Val::NumStr)
                    }
                    RespField::Header(h) => header_val(rec.response_headers.as_ref(), h),
                }
            }
            Op::Protocol => rec.protocol.map_or(Val::Unset, Val::Str),
            Op::ResponseCode => Val::Num(u64::from(rec.response_code)),
            Op::ResponseFlags => match rec.response_flags.as_ref() {
                // Envoy prints `-` for "no flags" even in JSON (Istio's JSON logs show "response_flags":"-").
                "" => Val::Str("-"),
                f => Val::Str(f),
            },
            Op::ResponseCodeDetails => opt_str(&rec.response_code_details),
            Op::ConnectionTerminationDetails => opt_str(&rec.connection_termination_details),
            Op::UpstreamTransportFailureReason => opt_str(&rec.upstream_transport_failure_reason),
            Op::BytesReceived => Val::Num(rec.bytes_received),
            Op::BytesSent => Val::Num(rec.bytes_sent),
            Op::Duration => Val::Num(u64::try_from(rec.duration.as_millis()).unwrap_or(u64::MAX)),
            Op::UpstreamHost => rec.upstream_host.map_or(Val::Unset, Val::Addr),
            Op::UpstreamCluster => opt_str(&rec.upstream_cluster),
            Op::UpstreamLocalAddress => rec.upstream_local_address.map_or(Val::Unset, Val::Addr),
            Op::DownstreamLocalAddress => {
                rec.downstream_local_address.map_or(Val::Unset, Val::Addr)
            }
            Op::DownstreamLocalAddressWithoutPort => rec
                .downstream_local_address
                .map_or(Val::Unset, |a| Val::Ip(a.ip())),
            Op::DownstreamRemoteAddress => {
                rec.downstream_remote_address.map_or(Val::Unset, Val::Addr)
            }
            Op::DownstreamRemoteAddressWithoutPort => rec
                .downstream_remote_address
                .map_or(Val::Unset, |a| Val::Ip(a.ip())),
            Op::DownstreamPeerUriSan => opt_str(&rec.downstream_peer_uri_san),
            Op::RequestedServerName => opt_str(&rec.requested_server_name),
            Op::RouteName => opt_str(&rec.route_name),
            Op::Hostname(h) => {
                if h.is_empty() {
                    Val::Unset
                } else {
                    Val::Str(h)
                }
            }
        }
    }
}

fn eval_req<'a>(f: &'a ReqField, rec: &'a AccessLogRecord) -> Val<'a> {
    fn hv(v: &Option<HeaderValue>) -> Val<'_> {
        match v {
            Some(v) if !v.is_empty() => Val::Bytes(v.as_bytes()),
            _ => Val::Unset,
        }
    }
    match f {
        ReqField::Method => rec
            .method
            .as_ref()
            .map_or(Val::Unset, |m| Val::Str(m.as_str())),
        ReqField::Path => match &rec.path {
            Some(p) if !p.is_empty() => Val::Str(p),
            _ => Val::Unset,
        },
        ReqField::Authority => hv(&rec.authority),
        ReqField::XForwardedFor => hv(&rec.x_forwarded_for),
        ReqField::UserAgent => hv(&rec.user_agent),
        ReqField::RequestId => hv(&rec.request_id),
        ReqField::Unavailable => Val::Unset,
        ReqField::Header(h) => header_val(rec.request_headers.as_ref(), h),
    }
}

fn header_val<'a>(map: Option<&'a HeaderMap>, name: &HeaderName) -> Val<'a> {
    match map.and_then(|m| m.get(name)) {
        Some(v) if !v.is_empty() => Val::Bytes(v.as_bytes()),
        _ => Val::Unset,
    }
}

// === Rendering ===

/// Writes a value as text, `-` when unset, cut to `max` bytes (on a character boundary).
pub(super) fn write_text(v: Val<'_>, max: Option<usize>, out: &mut String) {
    let start = out.len();
    if !write_raw(&v, out) {
        out.push('-');
        return;
    }
    if let Some(max) = max {
        truncate_at(out, start + max);
    }
}

/// Writes the value's text form; returns false (writing nothing) when unset.
fn write_raw(v: &Val<'_>, out: &mut String) -> bool {
    // `write!` into a String cannot fail; the results are ignored for that reason.
    match v {
        Val::Unset => return false,
        Val::Str(s) => out.push_str(s),
        Val::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => out.push_str(s),
            Err(_) => out.push_str(&String::from_utf8_lossy(b)),
        },
        Val::Num(n) | Val::NumStr(n) => {
            let _ = write!(out, "{n}");
        }
        Val::Addr(a) => {
            let _ = write!(out, "{a}");
        }
        Val::Ip(ip) => {
            let _ = write!(out, "{ip}");
        }
        Val::Time(t, f) => f.write(*t, out),
    }
    true
}

fn truncate_at(out: &mut String, mut end: usize) {
    if end >= out.len() {
        return;
    }
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
}

pub(super) fn render_json_object(
    fields: &[JsonField],
    rec: &AccessLogRecord,
    out: &mut String,
    scratch: &mut String,
) {
    out.push('{');
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&field.key);
        match &field.value {
            JsonNode::Literal(l) => out.push_str(l),
            JsonNode::Object(inner) => render_json_object(inner, rec, out, scratch),
            JsonNode::Template(segments) => render_json_template(segments, rec, out, scratch),
        }
    }
    out.push('}');
}

fn render_json_template(
    segments: &[Segment],
    rec: &AccessLogRecord,
    out: &mut String,
    scratch: &mut String,
) {
    scratch.clear();
    if let [Segment::Op(op, max)] = segments {
        // A value that is exactly one operator keeps its type: numbers stay numbers, unset is null.
        match op.eval(rec) {
            Val::Unset => out.push_str("null"),
            Val::Num(n) => {
                let _ = write!(out, "{n}");
            }
            v => {
                write_raw(&v, scratch);
                if let Some(max) = max {
                    truncate_at(scratch, *max);
                }
                push_json_str(out, scratch);
            }
        }
        return;
    }
    for seg in segments {
        match seg {
            Segment::Literal(s) => scratch.push_str(s),
            Segment::Op(op, max) => write_text(op.eval(rec), *max, scratch),
        }
    }
    push_json_str(out, scratch);
}

/// Appends `s` as a JSON string literal.
pub(super) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut last = 0;
    for (i, c) in s.char_indices() {
        let esc = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => {
                out.push_str(&s[last..i]);
                let _ = write!(out, "\\u{:04x}", c as u32);
                last = i + c.len_utf8();
                continue;
            }
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(esc);
        last = i + c.len_utf8();
    }
    out.push_str(&s[last..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escaping() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001é""#);
    }
}
