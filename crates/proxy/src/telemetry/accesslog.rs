//! Envoy-compatible access logging.
//!
//! The data path fills one [`AccessLogRecord`] per HTTP request or TCP/TLS connection and hands it to
//! [`AccessLogger::log`], which renders the line with a pre-compiled [`AccessLogFormat`] and passes it to
//! a writer thread over a bounded channel. The data path therefore never waits on a disk or a pipe; when
//! the writer falls behind, lines are dropped and counted (`sluice_accesslog_dropped_total`).
//!
//! Formats follow Envoy's command operators (`%START_TIME%`, `%REQ(X?Y):N%`, …) and Istio's defaults:
//! [`ISTIO_DEFAULT_TEXT_FORMAT`] for TEXT and [`ISTIO_DEFAULT_JSON_KEYS`] for JSON encoding.

mod format;
mod record;
mod render;
mod time;
mod writer;

use std::io;
use std::path::PathBuf;
use std::str::FromStr;

pub use format::AccessLogFormat;
pub use record::{protocol_name, AccessLogRecord};
pub use time::format_start_time;
pub use writer::AccessLogger;

/// Istio's default TEXT access log format (Istio ≥ 1.23, `EnvoyTextLogFormat`), byte for byte.
pub const ISTIO_DEFAULT_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON access log keys and operators (`EnvoyJSONLogFormatIstio`), in Istio's order.
pub const ISTIO_DEFAULT_JSON_KEYS: [(&str, &str); 24] = [
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
];

/// The path Istio and sluice use for "log to the proxy's standard output".
const STDOUT_PATH: &str = "/dev/stdout";
const STDERR_PATH: &str = "/dev/stderr";

// === Errors ===

/// A format string (mesh `accessLogFormat`) that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// A `%NAME%` that sluice does not know.
    #[error(
        "unknown access log command operator %{operator}%; supported operators: {}",
        SUPPORTED_OPERATORS
    )]
    UnknownOperator {
        /// The operator name as written, without `%`.
        operator: String,
    },
    /// Malformed operator syntax.
    #[error("access log format, byte {position}: {message}")]
    Syntax {
        /// Byte offset in the format string.
        position: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A JSON-encoded format that is not a JSON object of key → operator string.
    #[error("JSON access log format must be a JSON object mapping keys to format strings: {0}")]
    Json(String),
}

/// Why an [`AccessLogger`] could not be created or reconfigured.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// The format did not compile.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The log file could not be opened for appending.
    #[error("cannot open access log file {}: {source}", path.display())]
    Open {
        /// The configured path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start access log writer thread: {0}")]
    Thread(io::Error),
}

const SUPPORTED_OPERATORS: &str = "START_TIME, START_TIME(fmt), REQ(h), REQ(h?h2):N, RESP(h), PROTOCOL, \
RESPONSE_CODE, RESPONSE_FLAGS, RESPONSE_CODE_DETAILS, CONNECTION_TERMINATION_DETAILS, \
UPSTREAM_TRANSPORT_FAILURE_REASON, BYTES_RECEIVED, BYTES_SENT, DURATION, UPSTREAM_HOST, \
UPSTREAM_REMOTE_ADDRESS, UPSTREAM_CLUSTER, UPSTREAM_CLUSTER_RAW, UPSTREAM_LOCAL_ADDRESS, \
DOWNSTREAM_LOCAL_ADDRESS, DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT, DOWNSTREAM_REMOTE_ADDRESS, \
DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, DOWNSTREAM_PEER_URI_SAN, REQUESTED_SERVER_NAME, ROUTE_NAME, \
HOSTNAME, and %% for a literal percent sign";

// === Encoding and config ===

/// The mesh `accessLogEncoding`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum AccessLogEncoding {
    /// One line of text per record (Istio's default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for AccessLogEncoding {
    type Err = String;

    /// Parses the MeshConfig spelling (`TEXT`, `JSON`; case-insensitive, empty means TEXT).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" => Ok(AccessLogEncoding::Text),
            s if s.eq_ignore_ascii_case("TEXT") => Ok(AccessLogEncoding::Text),
            s if s.eq_ignore_ascii_case("JSON") => Ok(AccessLogEncoding::Json),
            other => Err(format!(
                "unknown accessLogEncoding {other:?}: expected TEXT or JSON"
            )),
        }
    }
}

/// Where and how to write the access log (the mesh config's `accessLogFile`, `accessLogEncoding`,
/// `accessLogFormat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// File to append to; `/dev/stdout` and `/dev/stderr` mean the process's streams. `None` = off.
    pub path: Option<PathBuf>,
    /// TEXT or JSON.
    pub encoding: AccessLogEncoding,
    /// Custom format; `None` or empty = Istio's default for the encoding.
    pub format: Option<String>,
}

impl Default for AccessLogConfig {
    /// sluice's default without a mesh config: Istio's TEXT format on stdout. (Istio itself logs nothing
    /// when `accessLogFile` is empty; sluice's contract is to log by default.)
    fn default() -> Self {
        AccessLogConfig {
            path: Some(PathBuf::from(STDOUT_PATH)),
            encoding: AccessLogEncoding::Text,
            format: None,
        }
    }
}

impl AccessLogConfig {
    /// Logging switched off.
    pub fn off() -> Self {
        AccessLogConfig {
            path: None,
            ..Default::default()
        }
    }
}
