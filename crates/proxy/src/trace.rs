//! Trace-context propagation and the sampling decision, as Envoy does it for Istio: every HTTP
//! hop (sidecar outbound, sidecar inbound, gateway) joins the caller's trace or starts one, and
//! sends the next hop a context whose span is this hop's. The spans themselves are reported by
//! [`crate::telemetry::spans`].
//!
//! Two header formats are read and written, kept consistent with each other:
//! - W3C Trace Context: `traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, and
//!   `tracestate` (vendor data, passed on untouched when the `traceparent` it belongs to was valid);
//! - Zipkin B3, in its multi-header form (`x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`,
//!   `x-b3-sampled`, `x-b3-flags`) and its single-header form (`b3: <trace>-<span>-<sampled>-<parent>`).
//!
//! Rules:
//! - An incoming context is taken from the first valid of `traceparent`, `b3`, then the
//!   `x-b3-*` headers. Invalid headers (wrong length, not hex, all-zero ids, version `ff`) are
//!   ignored, and replaced on the way out.
//! - With an incoming context, the trace id and the sampling decision are kept; this hop gets a new
//!   random 64-bit span id whose parent is the incoming span id.
//! - Without one, a trace starts: random 128-bit trace id (64-bit when the Zipkin provider sets
//!   `enable64bitTraceId`), random 64-bit span id, no parent.
//! - Sampling ([`SamplingPolicy`]): a trace this hop starts, or an incoming context without a
//!   decision, is sampled when the request carries `x-envoy-force-trace`, else with the
//!   configured percentage (`defaultConfig.tracing.sampling`, at Envoy's 0.01% resolution). An
//!   incoming decision is always kept. Without a tracing backend configured the percentage is 0:
//!   only forced traces are sampled, since no span would be reported anyway.
//! - Outgoing: `traceparent` and the B3 multi headers are always set; `b3` is rewritten only when
//!   the request had one (so a request never carries two B3 encodings the caller did not use).
//!   A 64-bit B3 trace id keeps its width in B3 headers and is zero-padded to 128 bits in
//!   `traceparent`.
//! - A gateway makes two spans, as Envoy's router does with `start_child_span`: its own span,
//!   then a child for the upstream call, whose id is the one sent upstream
//!   ([`propagate_with`] called twice).

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub static B3: HeaderName = HeaderName::from_static("b3");
pub static X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub static X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub static X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
pub static X_ENVOY_FORCE_TRACE: HeaderName = HeaderName::from_static("x-envoy-force-trace");

/// Where an incoming context was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceSource {
    /// `traceparent`.
    W3c,
    /// The single `b3` header.
    B3Single,
    /// The `x-b3-*` headers.
    B3Multi,
}

/// A trace context as read from a request: the caller's span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingContext {
    pub trace_id: u128,
    /// True when the trace id was given in 64 bits (B3 allows 16 hex digits).
    pub trace_id_64: bool,
    /// The caller's span id: the parent of this hop's span.
    pub span_id: u64,
    /// `None` when the caller deferred the decision.
    pub sampled: Option<bool>,
    /// B3 debug (`x-b3-flags: 1`, `b3: …-d-…`): implies sampled.
    pub debug: bool,
    pub source: TraceSource,
}

/// The context this hop sends upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub trace_id_64: bool,
    /// This hop's span.
    pub span_id: u64,
    /// The caller's span, when the request arrived with a context.
    pub parent_span_id: Option<u64>,
    pub sampled: bool,
    pub debug: bool,
}

impl TraceContext {
    /// `00-<trace>-<span>-<flags>`.
    pub fn traceparent(&self) -> String {
        self.render(Self::write_traceparent).into()
    }

    /// The B3 trace id: 16 hex digits when the trace started with a 64-bit id, else 32.
    pub fn b3_trace_id(&self) -> String {
        self.render(Self::write_b3_trace_id).into()
    }

    /// The single-header B3 form: `<trace>-<span>-<1|0|d>[-<parent>]`.
    pub fn b3_single(&self) -> String {
        self.render(Self::write_b3_single).into()
    }

    fn render(&self, write: fn(&Self, &mut HexBuf)) -> HexBuf {
        let mut buf = HexBuf::default();
        write(self, &mut buf);
        buf
    }

    fn write_traceparent(&self, out: &mut HexBuf) {
        out.push(b"00-");
        out.hex(self.trace_id, 32);
        out.push(b"-");
        out.hex(self.span_id.into(), 16);
        out.push(if self.sampled { b"-01" } else { b"-00" });
    }

    fn write_b3_trace_id(&self, out: &mut HexBuf) {
        if self.trace_id_64 {
            out.hex(u128::from(self.trace_id as u64), 16);
        } else {
            out.hex(self.trace_id, 32);
        }
    }

    fn write_b3_single(&self, out: &mut HexBuf) {
        self.write_b3_trace_id(out);
        out.push(b"-");
        out.hex(self.span_id.into(), 16);
        out.push(match (self.debug, self.sampled) {
            (true, _) => b"-d",
            (false, true) => b"-1",
            (false, false) => b"-0",
        });
        if let Some(p) = self.parent_span_id {
            out.push(b"-");
            out.hex(p.into(), 16);
        }
    }
}

/// A trace header value built on the stack: these are written on every request, and `format!`
/// into a `String` (then copied into a `HeaderValue`) showed in the request path's profile.
/// The longest value, single-header B3 with a parent, is 32+1+16+2+1+16 = 68 bytes.
struct HexBuf {
    bytes: [u8; 72],
    len: usize,
}

impl Default for HexBuf {
    fn default() -> Self {
        HexBuf {
            bytes: [0; 72],
            len: 0,
        }
    }
}

impl HexBuf {
    fn push(&mut self, s: &[u8]) {
        self.bytes[self.len..self.len + s.len()].copy_from_slice(s);
        self.len += s.len();
    }

    /// The low `digits` (16 or 32) hex digits of `v`, lower case, zero-padded, two per byte: shifting a u128 by a
    /// different amount for every digit cost more than the rest of the header.
    fn hex(&mut self, v: u128, digits: usize) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        debug_assert!(matches!(digits, 16 | 32));
        let bytes = v.to_be_bytes();
        let out = &mut self.bytes[self.len..self.len + digits];
        for (pair, b) in out.chunks_exact_mut(2).zip(&bytes[16 - digits / 2..]) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0xf)];
        }
        self.len += digits;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Hex digits and dashes only: always a valid header value.
    fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(self.as_bytes()).expect("hex digits and dashes")
    }
}

impl From<HexBuf> for String {
    fn from(buf: HexBuf) -> String {
        String::from_utf8_lossy(buf.as_bytes()).into_owned()
    }
}

/// Reads the incoming context (W3C first, then single B3, then multi B3). `None` when the
/// request has none that is valid.
pub fn extract(headers: &HeaderMap) -> Option<IncomingContext> {
    let get = |n: &HeaderName| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ctx) = get(&TRACEPARENT).and_then(parse_traceparent) {
        return Some(ctx);
    }
    if let Some(ctx) = get(&B3).and_then(parse_b3_single) {
        return Some(ctx);
    }
    let trace = get(&X_B3_TRACEID)?;
    let span = get(&X_B3_SPANID)?;
    let (trace_id, trace_id_64) = parse_trace_id(trace)?;
    let span_id = parse_span_id(span)?;
    let debug = get(&X_B3_FLAGS) == Some("1");
    let sampled = match get(&X_B3_SAMPLED) {
        Some("1") | Some("true") => Some(true),
        Some("0") | Some("false") => Some(false),
        _ => None,
    };
    Some(IncomingContext {
        trace_id,
        trace_id_64,
        span_id,
        sampled: if debug { Some(true) } else { sampled },
        debug,
        source: TraceSource::B3Multi,
    })
}

/// `version-traceid-parentid-flags`; version `ff` is invalid, a higher known-unknown version may
/// carry more fields after the four (W3C §3.2.4.1).
fn parse_traceparent(v: &str) -> Option<IncomingContext> {
    let mut parts = v.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || !is_lower_hex(version) || version == "ff" {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 || !is_lower_hex(flags) {
        return None;
    }
    if !is_lower_hex(trace) || !is_lower_hex(span) {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
    let span_id = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(IncomingContext {
        trace_id,
        trace_id_64: false,
        span_id,
        sampled: Some(flags & 1 == 1),
        debug: false,
        source: TraceSource::W3c,
    })
}

/// `b3: {traceid}-{spanid}[-{sampling}[-{parentspanid}]]`. The sampling-only form (`b3: 0`)
/// carries no ids and so no context.
fn parse_b3_single(v: &str) -> Option<IncomingContext> {
    let mut parts = v.split('-');
    let (trace_id, trace_id_64) = parse_trace_id(parts.next()?)?;
    let span_id = parse_span_id(parts.next()?)?;
    let (sampled, debug) = match parts.next() {
        None => (None, false),
        Some("1") => (Some(true), false),
        Some("0") => (Some(false), false),
        Some("d") => (Some(true), true),
        Some(_) => return None,
    };
    if let Some(parent) = parts.next() {
        parse_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(IncomingContext {
        trace_id,
        trace_id_64,
        span_id,
        sampled,
        debug,
        source: TraceSource::B3Single,
    })
}

fn parse_trace_id(s: &str) -> Option<(u128, bool)> {
    if !(s.len() == 16 || s.len() == 32) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = u128::from_str_radix(s, 16).ok().filter(|t| *t != 0)?;
    Some((id, s.len() == 16))
}

fn parse_span_id(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok().filter(|s| *s != 0)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn random_span_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

fn random_trace_id() -> u128 {
    loop {
        let id = rand::random::<u128>();
        if id != 0 {
            return id;
        }
    }
}

/// How a hop decides for traces it starts (or that arrive without a decision).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SamplingPolicy {
    /// Sampled out of 10,000 (Envoy's `random_sampling` resolution); 0: only forced traces.
    pub per_ten_thousand: u32,
    /// New traces get 64-bit ids (Zipkin `enable64bitTraceId`).
    pub new_trace_64_bit: bool,
}

impl SamplingPolicy {
    /// `percent` (0–100) as Envoy rounds it.
    pub fn from_percent(percent: f64, new_trace_64_bit: bool) -> Self {
        let per_ten_thousand = (percent.clamp(0.0, 100.0) * 100.0).round() as u32;
        SamplingPolicy {
            per_ten_thousand,
            new_trace_64_bit,
        }
    }

    /// The decision for a trace without one.
    fn decide(&self, force_trace: bool) -> bool {
        force_trace
            || match self.per_ten_thousand {
                0 => false,
                n if n >= 10_000 => true,
                n => rand::random_range(0..10_000u32) < n,
            }
    }
}

/// The context for this hop: a child span of the incoming one, or a new trace.
pub fn next_hop(incoming: Option<&IncomingContext>, force_trace: bool) -> TraceContext {
    next_hop_with(incoming, force_trace, &SamplingPolicy::default())
}

/// [`next_hop`] with the proxy's sampling policy.
pub fn next_hop_with(
    incoming: Option<&IncomingContext>,
    force_trace: bool,
    policy: &SamplingPolicy,
) -> TraceContext {
    match incoming {
        Some(inc) => TraceContext {
            trace_id: inc.trace_id,
            trace_id_64: inc.trace_id_64,
            span_id: random_span_id(),
            parent_span_id: Some(inc.span_id),
            sampled: inc.sampled.unwrap_or_else(|| policy.decide(force_trace)),
            debug: inc.debug,
        },
        None => {
            let trace_id = random_trace_id();
            TraceContext {
                trace_id: if policy.new_trace_64_bit {
                    u128::from(trace_id as u64).max(1)
                } else {
                    trace_id
                },
                trace_id_64: policy.new_trace_64_bit,
                span_id: random_span_id(),
                parent_span_id: None,
                sampled: policy.decide(force_trace),
                debug: false,
            }
        }
    }
}

/// Envoy's `x-request-id`: kept when the caller sent one, else a new random UUID (formatted on
/// the stack: this runs for every request).
pub fn ensure_request_id(headers: &mut HeaderMap) {
    if headers.contains_key(&X_REQUEST_ID) {
        return;
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Joins or starts the trace of the request whose `headers` are given and rewrites its trace
/// headers for the next hop (see the module docs). Returns the context sent upstream.
pub fn propagate(headers: &mut HeaderMap) -> TraceContext {
    propagate_with(headers, &SamplingPolicy::default())
}

/// [`propagate`] with the proxy's sampling policy.
pub fn propagate_with(headers: &mut HeaderMap, policy: &SamplingPolicy) -> TraceContext {
    let incoming = extract(headers);
    let force = headers.contains_key(&X_ENVOY_FORCE_TRACE);
    let ctx = next_hop_with(incoming.as_ref(), force, policy);
    let had_b3_single = headers.contains_key(&B3);
    let keep_tracestate = incoming
        .as_ref()
        .is_some_and(|i| i.source == TraceSource::W3c);
    if !keep_tracestate {
        // tracestate belongs to the traceparent it came with (W3C §3.3.1.1).
        headers.remove(&TRACESTATE);
    }
    let set =
        |headers: &mut HeaderMap, name: &HeaderName, write: fn(&TraceContext, &mut HexBuf)| {
            headers.insert(name.clone(), ctx.render(write).header_value());
        };
    set(headers, &TRACEPARENT, TraceContext::write_traceparent);
    set(headers, &X_B3_TRACEID, TraceContext::write_b3_trace_id);
    set(headers, &X_B3_SPANID, |c, out| {
        out.hex(c.span_id.into(), 16)
    });
    match ctx.parent_span_id {
        Some(_) => set(headers, &X_B3_PARENTSPANID, |c, out| {
            out.hex(c.parent_span_id.unwrap_or_default().into(), 16)
        }),
        None => {
            headers.remove(&X_B3_PARENTSPANID);
        }
    }
    headers.insert(
        X_B3_SAMPLED.clone(),
        HeaderValue::from_static(if ctx.sampled { "1" } else { "0" }),
    );
    if !ctx.debug {
        headers.remove(&X_B3_FLAGS);
    }
    if had_b3_single {
        set(headers, &B3, TraceContext::write_b3_single);
    }
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_kept_or_made() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("caller-id"));
        ensure_request_id(&mut h);
        assert_eq!(h["x-request-id"], "caller-id");
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        let id = uuid::Uuid::parse_str(h["x-request-id"].to_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 4);
        assert_eq!(h["x-request-id"].len(), 36);
    }

    /// The stack-built header values are exactly what `format!` would give.
    #[test]
    fn header_values_match_their_formatted_form() {
        for (trace_id, trace_id_64, span_id, parent, sampled, debug) in [
            (0u128, false, 0u64, None, false, false),
            (u128::MAX, false, u64::MAX, Some(u64::MAX), true, true),
            (
                0x0af7651916cd43dd8448eb211c80319c,
                false,
                0xb7ad6b7169203331,
                Some(1),
                true,
                false,
            ),
            (
                0x463ac35c9f6413ad_48485a3953bb6124,
                true,
                0x0020000000000001,
                None,
                false,
                true,
            ),
        ] {
            let c = TraceContext {
                trace_id,
                trace_id_64,
                span_id,
                parent_span_id: parent,
                sampled,
                debug,
            };
            let tid = if trace_id_64 {
                format!("{:016x}", trace_id as u64)
            } else {
                format!("{trace_id:032x}")
            };
            assert_eq!(
                c.traceparent(),
                format!(
                    "00-{trace_id:032x}-{span_id:016x}-{}",
                    if sampled { "01" } else { "00" }
                )
            );
            assert_eq!(c.b3_trace_id(), tid);
            let flag = if debug {
                "d"
            } else if sampled {
                "1"
            } else {
                "0"
            };
            let mut single = format!("{tid}-{span_id:016x}-{flag}");
            if let Some(p) = parent {
                single.push_str(&format!("-{p:016x}"));
            }
            assert_eq!(c.b3_single(), single);
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn get<'a>(h: &'a HeaderMap, n: &str) -> &'a str {
        h.get(n).map(|v| v.to_str().unwrap()).unwrap_or("")
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn parses_valid_traceparent() {
        let h = headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-01"))]);
        let c = extract(&h).unwrap();
        assert_eq!(c.trace_id, u128::from_str_radix(TRACE, 16).unwrap());
        assert_eq!(c.span_id, u64::from_str_radix(SPAN, 16).unwrap());
        assert_eq!(c.sampled, Some(true));
        assert_eq!(c.source, TraceSource::W3c);
        // Future versions may add fields.
        let h = headers(&[("traceparent", &format!("01-{TRACE}-{SPAN}-00-extra"))]);
        assert_eq!(extract(&h).unwrap().sampled, Some(false));
    }

    #[test]
    fn rejects_invalid_traceparents() {
        for bad in [
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{SPAN}"),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("00-{}-{SPAN}-01", &TRACE[..30]),
            "garbage".to_string(),
            format!("00-{TRACE}-zzf067aa0ba902b7-01"),
        ] {
            assert!(
                extract(&headers(&[("traceparent", &bad)])).is_none(),
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_b3_forms() {
        let h = headers(&[("b3", &format!("{TRACE}-{SPAN}-1-05e3ac9a4f6e3b90"))]);
        let c = extract(&h).unwrap();
        assert_eq!(c.source, TraceSource::B3Single);
        assert_eq!(c.sampled, Some(true));
        let h = headers(&[("b3", &format!("a3ce929d0e0e4736-{SPAN}-d"))]);
        let c = extract(&h).unwrap();
        assert!(c.trace_id_64 && c.debug && c.sampled == Some(true));
        assert!(extract(&headers(&[("b3", "0")])).is_none());
        assert!(extract(&headers(&[("b3", &format!("{TRACE}-{SPAN}-x"))])).is_none());

        let h = headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "0"),
        ]);
        let c = extract(&h).unwrap();
        assert_eq!(c.source, TraceSource::B3Multi);
        assert_eq!(c.sampled, Some(false));
        let h = headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", "123")]);
        assert!(extract(&h).is_none());
    }

    #[test]
    fn w3c_context_is_propagated_with_a_new_span() {
        let mut h = headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]);
        let ctx = propagate(&mut h);
        assert_eq!(
            ctx.parent_span_id,
            Some(u64::from_str_radix(SPAN, 16).unwrap())
        );
        assert_ne!(ctx.span_id, u64::from_str_radix(SPAN, 16).unwrap());
        let tp = get(&h, "traceparent");
        assert!(tp.starts_with(&format!("00-{TRACE}-")), "{tp}");
        assert!(tp.ends_with("-01"), "{tp}");
        assert!(!tp.contains(SPAN), "{tp}");
        assert_eq!(get(&h, "tracestate"), "congo=t61rcWkgMzE");
        // B3 says the same.
        assert_eq!(get(&h, "x-b3-traceid"), TRACE);
        assert_eq!(get(&h, "x-b3-parentspanid"), SPAN);
        assert_eq!(get(&h, "x-b3-spanid"), &tp[36..52]);
        assert_eq!(get(&h, "x-b3-sampled"), "1");
        assert!(h.get("b3").is_none());
    }

    #[test]
    fn b3_context_is_propagated_and_w3c_added() {
        let mut h = headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", SPAN),
            ("x-b3-parentspanid", "1111111111111111"),
            ("x-b3-sampled", "1"),
            ("tracestate", "orphan=1"),
        ]);
        let ctx = propagate(&mut h);
        // A 64-bit trace id keeps its width in B3 and is padded in W3C.
        assert_eq!(get(&h, "x-b3-traceid"), "a3ce929d0e0e4736");
        assert_eq!(get(&h, "x-b3-parentspanid"), SPAN);
        assert_eq!(
            get(&h, "traceparent"),
            format!(
                "00-0000000000000000a3ce929d0e0e4736-{:016x}-01",
                ctx.span_id
            )
        );
        assert!(h.get("tracestate").is_none());

        let mut h = headers(&[("b3", &format!("{TRACE}-{SPAN}-0"))]);
        let ctx = propagate(&mut h);
        assert_eq!(
            get(&h, "b3"),
            format!("{TRACE}-{:016x}-0-{SPAN}", ctx.span_id)
        );
        assert_eq!(get(&h, "x-b3-sampled"), "0");
        assert!(get(&h, "traceparent").ends_with("-00"));
    }

    #[test]
    fn a_trace_is_started_when_none_or_only_invalid_headers_arrive() {
        let mut h = headers(&[
            ("traceparent", "00-zz-zz-01"),
            ("x-b3-traceid", "nothex"),
            ("x-b3-spanid", SPAN),
            ("x-b3-parentspanid", SPAN),
            ("tracestate", "a=b"),
        ]);
        let ctx = propagate(&mut h);
        assert_eq!(ctx.parent_span_id, None);
        assert!(!ctx.sampled);
        let tp = get(&h, "traceparent").to_string();
        assert!(parse_traceparent(&tp).is_some(), "{tp}");
        assert_eq!(get(&h, "x-b3-traceid"), &tp[3..35]);
        assert_eq!(get(&h, "x-b3-spanid"), &tp[36..52]);
        assert!(h.get("x-b3-parentspanid").is_none());
        assert!(h.get("tracestate").is_none());
        assert_eq!(get(&h, "x-b3-sampled"), "0");

        let mut h = headers(&[("x-envoy-force-trace", "true")]);
        let ctx = propagate(&mut h);
        assert!(ctx.sampled);
        assert_eq!(get(&h, "x-b3-sampled"), "1");
        assert!(get(&h, "traceparent").ends_with("-01"));
    }

    #[test]
    fn sampling_policy_decides_new_traces_only() {
        let all = SamplingPolicy::from_percent(100.0, false);
        let none = SamplingPolicy::from_percent(0.004, false);
        assert_eq!(none.per_ten_thousand, 0);
        assert_eq!(
            SamplingPolicy::from_percent(1.0, false).per_ten_thousand,
            100
        );
        for _ in 0..200 {
            assert!(propagate_with(&mut HeaderMap::new(), &all).sampled);
            assert!(!propagate_with(&mut HeaderMap::new(), &none).sampled);
        }
        // Forced, with no backend percentage.
        let mut h = headers(&[("x-envoy-force-trace", "true")]);
        assert!(propagate_with(&mut h, &none).sampled);
        // An incoming decision is kept either way.
        let mut h = headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-00"))]);
        assert!(!propagate_with(&mut h, &all).sampled);
        let mut h = headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-01"))]);
        assert!(propagate_with(&mut h, &none).sampled);
        // B3 without a decision gets the policy's.
        let mut h = headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN)]);
        assert!(propagate_with(&mut h, &all).sampled);
        // About 1 in 2 at 50%.
        let half = SamplingPolicy::from_percent(50.0, false);
        let n = (0..2000)
            .filter(|_| propagate_with(&mut HeaderMap::new(), &half).sampled)
            .count();
        assert!((800..1200).contains(&n), "{n}");
    }

    #[test]
    fn new_traces_can_be_64_bit_and_a_second_hop_is_a_child() {
        let p = SamplingPolicy::from_percent(100.0, true);
        let mut h = HeaderMap::new();
        let first = propagate_with(&mut h, &p);
        assert!(first.trace_id_64 && first.trace_id <= u128::from(u64::MAX));
        assert_eq!(get(&h, "x-b3-traceid").len(), 16);
        let second = propagate_with(&mut h, &p);
        assert_eq!(second.trace_id, first.trace_id);
        assert_eq!(second.parent_span_id, Some(first.span_id));
        assert_eq!(get(&h, "x-b3-spanid"), format!("{:016x}", second.span_id));
    }

    #[test]
    fn w3c_wins_over_b3_when_both_are_valid() {
        let mut h = headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("x-b3-traceid", "1111111111111111"),
            ("x-b3-spanid", "2222222222222222"),
        ]);
        propagate(&mut h);
        assert_eq!(get(&h, "x-b3-traceid"), TRACE);
        assert_eq!(get(&h, "x-b3-parentspanid"), SPAN);
    }
}
