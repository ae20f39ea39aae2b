//! gRPC requests as Envoy's HTTP connection manager and Istio's stats filter see them.
//!
//! - A request is gRPC when its `content-type` is `application/grpc` or `application/grpc+…`
//!   (Envoy's `Grpc::Common::isGrpcRequestHeaders`; `application/grpc-web…` is not).
//! - A local reply to a gRPC request is sent as a trailers-only gRPC response (Envoy's
//!   `Utility::sendLocalReply` with `is_grpc`): HTTP 200, `content-type: application/grpc`,
//!   `grpc-status` from the HTTP status ([`http_to_grpc_status`]) and `grpc-message` with the
//!   percent-encoded body text, no body. The access log and `response_code` show the 200 the
//!   client got.
//! - `grpc_response_status` is the status of the `grpc-status` trailer, else of the
//!   `grpc-status` header (trailers-only), else the HTTP status mapped to a gRPC status (Envoy's
//!   `Grpc::Common::getGrpcStatus`). A status that is not a number from 0 to 16 counts as
//!   UNKNOWN (2).
//!
//! [`LoggedBody`] reads the trailer, only for requests whose label was set here.
//!
//! [`LoggedBody`]: crate::body::LoggedBody

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty};

use crate::upstream::ProxyBody;

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// gRPC's UNKNOWN.
const UNKNOWN: u32 = 2;
/// The highest status gRPC defines (UNAUTHENTICATED).
const MAX_KNOWN: u32 = 16;

/// Whether a request with this `content-type` is gRPC.
pub(crate) fn is_grpc_content_type(value: Option<&HeaderValue>) -> bool {
    let Some(rest) = value.and_then(|v| v.as_bytes().strip_prefix(b"application/grpc")) else {
        return false;
    };
    rest.is_empty() || rest[0] == b'+'
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`.
pub(crate) fn http_to_grpc_status(status: u16) -> u32 {
    match status {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => UNKNOWN,
    }
}

/// The status a `grpc-status` header or trailer carries, if it is there.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    let v = headers.get(&GRPC_STATUS)?;
    Some(
        std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|s| *s <= MAX_KNOWN)
            .unwrap_or(UNKNOWN),
    )
}

/// gRPC's percent-encoding of `grpc-message`: bytes outside printable ASCII, and `%`.
fn percent_encode(text: &[u8]) -> Cow<'_, [u8]> {
    let plain = |b: u8| (b' '..=b'~').contains(&b) && b != b'%';
    if text.iter().copied().all(plain) {
        return Cow::Borrowed(text);
    }
    let mut out = Vec::with_capacity(text.len() + 16);
    for &b in text {
        if plain(b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    Cow::Owned(out)
}

/// A local reply turned into Envoy's trailers-only gRPC response: 200, `grpc-status` from the
/// reply's HTTP status, `grpc-message` from its body text. The other headers (`server`, `date`,
/// `x-envoy-overloaded`, `connection: close`, a redirect's `location`) stay.
pub(crate) async fn trailers_only(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    // A local reply's body is a `Full`: collecting it does not wait.
    let text = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let status = http_to_grpc_status(parts.status.as_u16());
    parts.status = StatusCode::OK;
    let h = &mut parts.headers;
    h.remove(header::CONTENT_LENGTH);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS.clone(), HeaderValue::from(status));
    // Envoy drops one trailing newline (a JSON local reply format adds it).
    let text = text.strip_suffix(b"\n").unwrap_or(&text);
    if !text.is_empty() {
        if let Ok(v) = HeaderValue::from_bytes(&percent_encode(text)) {
            h.insert(GRPC_MESSAGE.clone(), v);
        }
    }
    let body = Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync();
    Response::from_parts(parts, body)
}

/// A gRPC request's status before its trailers: the response head's `grpc-status`
/// (trailers-only), else its HTTP status mapped as Envoy maps it. [`LoggedBody`] replaces it with
/// the `grpc-status` trailer when one comes.
///
/// [`LoggedBody`]: crate::body::LoggedBody
pub(crate) fn initial_status(head: &http::response::Parts) -> u32 {
    grpc_status(&head.headers).unwrap_or_else(|| http_to_grpc_status(head.status.as_u16()))
}

#[cfg(test)]
mod tests {
    use http_body::Body as _;

    use super::*;

    #[test]
    fn grpc_content_types_follow_envoy() {
        let is = |v: &'static str| is_grpc_content_type(Some(&HeaderValue::from_static(v)));
        assert!(is("application/grpc"));
        assert!(is("application/grpc+proto"));
        assert!(!is("application/grpc-web"));
        assert!(!is("application/grpc-web+proto"));
        assert!(!is("application/json"));
        assert!(!is_grpc_content_type(None));
    }

    #[test]
    fn http_statuses_map_to_envoys_grpc_statuses() {
        let cases = [
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 14),
            (502, 14),
            (503, 14),
            (504, 14),
            (200, 2),
            (500, 2),
        ];
        for (http, grpc) in cases {
            assert_eq!(http_to_grpc_status(http), grpc, "{http}");
        }
    }

    #[test]
    fn grpc_status_values_are_read_and_bad_ones_are_unknown() {
        let status = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(GRPC_STATUS.clone(), HeaderValue::from_static(v));
            grpc_status(&h)
        };
        assert_eq!(status("0"), Some(0));
        assert_eq!(status("14"), Some(14));
        assert_eq!(status("16"), Some(16));
        assert_eq!(status("17"), Some(UNKNOWN));
        assert_eq!(status("x"), Some(UNKNOWN));
        assert_eq!(grpc_status(&HeaderMap::new()), None);
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(
            &*percent_encode(b"no healthy upstream"),
            b"no healthy upstream"
        );
        assert_eq!(
            &*percent_encode("50% \u{e9}\n".as_bytes()),
            b"50%25 %C3%A9%0A"
        );
    }

    #[tokio::test]
    async fn a_local_reply_becomes_trailers_only() {
        let reply = crate::http_manager::ProxyError::NoHealthyUpstream.reply(false);
        let resp = crate::http_manager::local_response(HeaderValue::from_static("envoy"), &reply);
        let resp = trailers_only(resp).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["grpc-message"], "no healthy upstream");
        assert_eq!(h[header::SERVER], "envoy");
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        assert!(resp.body().is_end_stream());
    }
}
