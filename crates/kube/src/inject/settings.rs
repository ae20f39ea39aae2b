//! What a pod asks of its sidecar: Istio's injection annotations and the `proxy.istio.io/config`
//! ProxyConfig, validated as Istio's injector validates them (`pkg/kube/inject/validate.go`), and
//! resolved to what the injected containers carry.

use serde_json::{Map, Value};

use super::yaml;

/// The annotations and labels Istio's injector reads (istio/api `annotation`, `label`).
pub mod names {
    pub const INJECT: &str = "sidecar.istio.io/inject";
    pub const STATUS: &str = "sidecar.istio.io/status";
    pub const PROXY_CONFIG: &str = "proxy.istio.io/config";
    pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
    pub const PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";
    pub const PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
    pub const PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
    pub const PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
    pub const PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";
    pub const LOG_LEVEL: &str = "sidecar.istio.io/logLevel";
    pub const STATUS_PORT: &str = "status.sidecar.istio.io/port";
    pub const READINESS_INITIAL_DELAY: &str =
        "readiness.status.sidecar.istio.io/initialDelaySeconds";
    pub const READINESS_PERIOD: &str = "readiness.status.sidecar.istio.io/periodSeconds";
    pub const READINESS_FAILURE_THRESHOLD: &str =
        "readiness.status.sidecar.istio.io/failureThreshold";
    pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
    pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
    pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
    pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
    pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
    pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
    pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
    pub const KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";
    pub const REROUTE_VIRTUAL_INTERFACES: &str = "istio.io/reroute-virtual-interfaces";
    pub const MERGE_METRICS: &str = "prometheus.istio.io/merge-metrics";
    pub const REVISION: &str = "istio.io/rev";
    pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
    pub const DEFAULT_LOGS_CONTAINER: &str = "kubectl.kubernetes.io/default-logs-container";
    pub const TLS_MODE: &str = "security.istio.io/tlsMode";
    pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
    pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
    /// Annotations Istio's injector acts on that sluice's does not: a pod that sets one is
    /// injected without it, with a warning.
    pub const NOT_SUPPORTED: [&str; 9] = [
        "sidecar.istio.io/bootstrapOverride",
        "sidecar.istio.io/userVolume",
        "sidecar.istio.io/userVolumeMount",
        "sidecar.istio.io/componentLogLevel",
        "sidecar.istio.io/agentLogLevel",
        "sidecar.istio.io/rewriteAppHTTPProbers",
        "sidecar.istio.io/nativeSidecar",
        "sidecar.istio.io/proxyImageType",
        "inject.istio.io/templates",
    ];
}

/// How traffic reaches the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interception {
    /// iptables REDIRECT, by the `istio-init` container (`sluice init`).
    Redirect,
    /// No capture and no init container: the application uses the explicit proxy.
    None,
}

/// Readiness probe timing (Istio's `readiness.status.sidecar.istio.io/*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub initial_delay_seconds: u32,
    pub period_seconds: u32,
    pub failure_threshold: u32,
}

/// Everything the injected containers depend on, for one pod.
#[derive(Debug, Clone)]
pub struct Settings {
    pub interception: Interception,
    pub include_outbound_ip_ranges: String,
    pub exclude_outbound_ip_ranges: String,
    pub include_inbound_ports: String,
    pub exclude_inbound_ports: String,
    pub include_outbound_ports: Option<String>,
    pub exclude_outbound_ports: Option<String>,
    pub exclude_interfaces: Option<String>,
    pub reroute_interfaces: Option<String>,
    pub image: Option<String>,
    pub requests: Map<String, Value>,
    pub limits: Map<String, Value>,
    /// `None`: no probes (`status.sidecar.istio.io/port: "0"`).
    pub readiness: Option<Readiness>,
    pub log_level: Option<&'static str>,
    pub merge_metrics: bool,
    pub proxy: ProxySettings,
}

/// The ProxyConfig fields sluice applies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxySettings {
    pub hold_application_until_proxy_starts: bool,
    pub concurrency: Option<u64>,
    pub termination_drain_duration: Option<String>,
    pub interception_mode: Option<String>,
    /// Environment variables of the proxy container, as Istio sets them.
    pub proxy_metadata: Vec<(String, String)>,
}

/// A problem with one annotation (or one field of a ProxyConfig) of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The annotation's name (its field is `metadata.annotations.<name>`), or `None` for a
    /// problem in the mesh config's `defaultConfig`.
    pub annotation: Option<String>,
    pub message: String,
}

/// Reads `annotations` (already checked to be strings) over the mesh's `defaultConfig`.
/// Returns the settings and the warnings, or the first error.
pub fn read(
    annotations: &Map<String, Value>,
    default_proxy_config: &Map<String, Value>,
) -> Result<(Settings, Vec<Problem>), Problem> {
    let get = |name: &str| annotations.get(name).and_then(Value::as_str);
    let mut warnings = Vec::new();
    let invalid = |name: &str, why: String| Problem {
        annotation: Some(name.to_string()),
        message: format!(
            "invalid value {:?} for annotation {name}: {why}",
            get(name).unwrap_or_default()
        ),
    };

    for name in names::NOT_SUPPORTED {
        if annotations.contains_key(name) {
            warnings.push(Problem {
                annotation: Some(name.to_string()),
                message: format!(
                    "annotation {name} is not supported by sluice's injector; ignored"
                ),
            });
        }
    }

    // ProxyConfig: the mesh's defaultConfig, then the pod's annotation over it.
    let mut proxy = ProxySettings::default();
    // Warnings about the mesh's own fields were given once, when it was read.
    apply_proxy_config(&mut proxy, default_proxy_config).map_err(|message| Problem {
        annotation: None,
        message: format!("defaultConfig: {message}"),
    })?;
    if let Some(text) = get(names::PROXY_CONFIG) {
        let config = parse_proxy_config(text).map_err(|m| invalid(names::PROXY_CONFIG, m))?;
        let (_, field_warnings) =
            apply_proxy_config(&mut proxy, &config).map_err(|m| invalid(names::PROXY_CONFIG, m))?;
        warnings.extend(field_warnings.into_iter().map(|message| Problem {
            annotation: Some(names::PROXY_CONFIG.to_string()),
            message,
        }));
    }

    let mode = get(names::INTERCEPTION_MODE)
        .map(str::to_string)
        .or_else(|| proxy.interception_mode.clone())
        .unwrap_or_else(|| "REDIRECT".to_string());
    let interception = match mode.as_str() {
        "REDIRECT" => Interception::Redirect,
        "NONE" => Interception::None,
        "TPROXY" => {
            warnings.push(Problem {
                annotation: Some(names::INTERCEPTION_MODE.to_string()),
                message: "interception mode TPROXY is not supported by sluice's sidecar; \
                          REDIRECT is used (the application sees connections from 127.0.0.6)"
                    .to_string(),
            });
            Interception::Redirect
        }
        other => {
            let why = format!("interceptionMode invalid, use REDIRECT,TPROXY,NONE: {other}");
            return Err(match get(names::INTERCEPTION_MODE) {
                Some(_) => invalid(names::INTERCEPTION_MODE, why),
                None => invalid(names::PROXY_CONFIG, why),
            });
        }
    };

    let cidrs = |name: &str, default: &str, star: bool| -> Result<String, Problem> {
        match get(name) {
            None => Ok(default.to_string()),
            Some("*") if star => Ok("*".to_string()),
            Some(v) => validate_cidr_list(v)
                .map(|()| v.to_string())
                .map_err(|why| invalid(name, why)),
        }
    };
    let ports = |name: &str, default: &str, star: bool| -> Result<String, Problem> {
        match get(name) {
            None => Ok(default.to_string()),
            Some(v) if star && v.trim() == "*" => Ok("*".to_string()),
            Some(v) => validate_port_list(v)
                .map(|()| v.trim().to_string())
                .map_err(|why| invalid(name, why)),
        }
    };
    let optional_ports = |name: &str| -> Result<Option<String>, Problem> {
        get(name)
            .map(|v| {
                validate_port_list(v)
                    .map(|()| v.trim().to_string())
                    .map_err(|why| invalid(name, why))
            })
            .transpose()
    };
    let interfaces = |name: &str| -> Result<Option<String>, Problem> {
        get(name)
            .map(|v| {
                validate_interfaces(v)
                    .map(|()| v.to_string())
                    .map_err(|why| invalid(name, why))
            })
            .transpose()
    };

    let mut requests = Map::new();
    let mut limits = Map::new();
    for (name, limit, key) in [
        (names::PROXY_CPU, false, "cpu"),
        (names::PROXY_MEMORY, false, "memory"),
        (names::PROXY_CPU_LIMIT, true, "cpu"),
        (names::PROXY_MEMORY_LIMIT, true, "memory"),
    ] {
        if let Some(v) = get(name) {
            if !is_quantity(v) {
                return Err(invalid(
                    name,
                    "not a Kubernetes quantity such as 100m, 0.5 or 128Mi".to_string(),
                ));
            }
            let into = if limit { &mut limits } else { &mut requests };
            into.insert(key.to_string(), Value::String(v.to_string()));
        }
    }

    let status_port = match get(names::STATUS_PORT) {
        None => None,
        Some(v) => Some(parse_port(v).map_err(|why| invalid(names::STATUS_PORT, why))?),
    };
    let u32_of = |name: &str, default: u32| -> Result<u32, Problem> {
        match get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<u32>()
                .map_err(|_| invalid(name, "not a non-negative integer".to_string())),
        }
    };
    let readiness = Readiness {
        initial_delay_seconds: u32_of(names::READINESS_INITIAL_DELAY, 0)?,
        period_seconds: u32_of(names::READINESS_PERIOD, 15)?,
        failure_threshold: u32_of(names::READINESS_FAILURE_THRESHOLD, 4)?,
    };
    let readiness = match status_port {
        Some(0) => None,
        Some(p) if p != crate::inject::STATUS_PORT => {
            warnings.push(Problem {
                annotation: Some(names::STATUS_PORT.to_string()),
                message: format!(
                    "sluice's sidecar reports readiness on port {}; port {p} is not used",
                    crate::inject::STATUS_PORT
                ),
            });
            Some(readiness)
        }
        _ => Some(readiness),
    };

    let merge_metrics = match get(names::MERGE_METRICS) {
        None => true,
        Some(v) => parse_go_bool(v)
            .ok_or_else(|| invalid(names::MERGE_METRICS, "not true or false".to_string()))?,
    };

    let log_level = match get(names::LOG_LEVEL) {
        None => None,
        Some(v) => match proxy_log_level(v) {
            Some(level) => Some(level),
            None => {
                warnings.push(Problem {
                    annotation: Some(names::LOG_LEVEL.to_string()),
                    message: format!(
                        "log level {v:?} is not one of trace, debug, info, warning, error, \
                         critical, off; the sidecar's default is used"
                    ),
                });
                None
            }
        },
    };

    let image = get(names::PROXY_IMAGE).and_then(|v| {
        // As Istio: only a full image reference (with a registry or repository) replaces the
        // default; a bare name is an Istio image type.
        if v.contains('/') {
            Some(v.to_string())
        } else {
            warnings.push(Problem {
                annotation: Some(names::PROXY_IMAGE.to_string()),
                message: format!("{v:?} is not an image reference (REGISTRY/NAME:TAG); the default image is used"),
            });
            None
        }
    });

    let reroute = match interfaces(names::REROUTE_VIRTUAL_INTERFACES)? {
        Some(v) => Some(v),
        None => interfaces(names::KUBEVIRT_INTERFACES)?,
    };
    let settings = Settings {
        interception,
        include_outbound_ip_ranges: cidrs(names::INCLUDE_OUTBOUND_IP_RANGES, "*", true)?,
        exclude_outbound_ip_ranges: cidrs(names::EXCLUDE_OUTBOUND_IP_RANGES, "", false)?,
        include_inbound_ports: ports(names::INCLUDE_INBOUND_PORTS, "*", true)?,
        exclude_inbound_ports: ports(names::EXCLUDE_INBOUND_PORTS, "", false)?,
        include_outbound_ports: optional_ports(names::INCLUDE_OUTBOUND_PORTS)?,
        exclude_outbound_ports: optional_ports(names::EXCLUDE_OUTBOUND_PORTS)?,
        exclude_interfaces: interfaces(names::EXCLUDE_INTERFACES)?,
        reroute_interfaces: reroute,
        image,
        requests,
        limits,
        readiness,
        log_level,
        merge_metrics,
        proxy,
    };
    Ok((settings, warnings))
}

/// The ProxyConfig in an annotation (YAML or JSON; empty means none).
fn parse_proxy_config(text: &str) -> Result<Map<String, Value>, String> {
    let docs = yaml::parse_documents(text, 0).map_err(|e| e.message)?;
    match docs.into_iter().next().map(|d| d.value) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err("a ProxyConfig must be a mapping of fields".to_string()),
    }
}

/// Every field of Istio's ProxyConfig (istio/api `mesh/v1alpha1/proxy.proto`).
const PROXY_CONFIG_FIELDS: [&str; 41] = [
    "configPath",
    "binaryPath",
    "serviceCluster",
    "tracingServiceName",
    "drainDuration",
    "parentShutdownDuration",
    "discoveryAddress",
    "discoveryRefreshDelay",
    "zipkinAddress",
    "statsdUdpAddress",
    "envoyMetricsServiceAddress",
    "proxyAdminPort",
    "availabilityZone",
    "controlPlaneAuthPolicy",
    "customConfigFile",
    "statNameLength",
    "concurrency",
    "proxyBootstrapTemplatePath",
    "interceptionMode",
    "tracing",
    "sds",
    "envoyAccessLogService",
    "envoyMetricsService",
    "proxyMetadata",
    "runtimeValues",
    "statusPort",
    "extraStatTags",
    "gatewayTopology",
    "terminationDrainDuration",
    "meshId",
    "readinessProbe",
    "proxyStatsMatcher",
    "holdApplicationUntilProxyStarts",
    "caCertificatesPem",
    "image",
    "privateKeyProvider",
    "proxyHeaders",
    "fileFlushInterval",
    "fileFlushMinSizeKb",
    "statsCompression",
    "connectionSettings",
];

/// `snake_case` → `camelCase` (protobuf JSON accepts both spellings).
fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Applies the fields of `config` that sluice acts on to `proxy`; returns the fields applied and
/// a warning for each field that is not (naming it), or an error for a field sluice acts on whose
/// value is wrong.
pub fn apply_proxy_config(
    proxy: &mut ProxySettings,
    config: &Map<String, Value>,
) -> Result<(Vec<String>, Vec<String>), String> {
    let mut applied = Vec::new();
    let mut warnings = Vec::new();
    for (key, value) in config {
        let field = camel(key);
        match field.as_str() {
            "holdApplicationUntilProxyStarts" => {
                proxy.hold_application_until_proxy_starts = match value {
                    Value::Bool(b) => *b,
                    Value::Null => false,
                    _ => return Err(format!("{key}: must be true or false")),
                };
            }
            "concurrency" => {
                proxy.concurrency = match value {
                    Value::Null => None,
                    Value::Number(n) => Some(
                        n.as_u64()
                            .ok_or_else(|| format!("{key}: must be a non-negative integer"))?,
                    ),
                    // protobuf JSON writes wrapped integers as numbers or strings
                    Value::String(s) => Some(
                        s.parse()
                            .map_err(|_| format!("{key}: must be a non-negative integer"))?,
                    ),
                    _ => return Err(format!("{key}: must be a non-negative integer")),
                };
            }
            "terminationDrainDuration" => {
                proxy.termination_drain_duration = match value {
                    Value::Null => None,
                    Value::String(s) => {
                        s.parse::<sluice_api::duration::Duration>()
                            .map_err(|e| format!("{key}: {e}"))?;
                        Some(s.trim().to_string())
                    }
                    _ => return Err(format!("{key}: must be a duration such as \"5s\"")),
                };
            }
            "interceptionMode" => {
                proxy.interception_mode = match value {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    _ => return Err(format!("{key}: must be REDIRECT, TPROXY or NONE")),
                };
            }
            "proxyMetadata" => {
                let Value::Object(vars) = value else {
                    return Err(format!("{key}: must be a mapping of names to strings"));
                };
                for (name, v) in vars {
                    let Value::String(v) = v else {
                        return Err(format!("{key}.{name}: must be a string"));
                    };
                    match proxy.proxy_metadata.iter_mut().find(|(n, _)| n == name) {
                        Some(slot) => slot.1 = v.clone(),
                        None => proxy.proxy_metadata.push((name.clone(), v.clone())),
                    }
                }
            }
            "discoveryAddress" => {
                warnings.push(format!(
                    "ProxyConfig field {key} is not applied: the sidecar connects to the control \
                     plane given by --xds-address"
                ));
                continue;
            }
            "statusPort" => {
                warnings.push(format!(
                    "ProxyConfig field {key} is not applied: sluice's sidecar reports readiness \
                     on port {}",
                    crate::inject::STATUS_PORT
                ));
                continue;
            }
            f if PROXY_CONFIG_FIELDS.contains(&f) => {
                warnings.push(format!(
                    "ProxyConfig field {key} is not supported by sluice; ignored"
                ));
                continue;
            }
            _ => {
                warnings.push(format!("unknown ProxyConfig field {key}; ignored"));
                continue;
            }
        }
        applied.push(field);
    }
    Ok((applied, warnings))
}

/// Comma-separated CIDRs (`netip.ParsePrefix` in Istio: no spaces), possibly empty.
fn validate_cidr_list(list: &str) -> Result<(), String> {
    if list.is_empty() {
        return Ok(());
    }
    for cidr in list.split(',') {
        if cidr.parse::<ipnet::IpNet>().is_err() {
            return Err(format!("{cidr:?} is not a CIDR such as 10.0.0.0/8"));
        }
    }
    Ok(())
}

fn parse_port(s: &str) -> Result<u16, String> {
    s.trim()
        .parse::<u16>()
        .map_err(|_| format!("{:?} is not a port number (0-65535)", s.trim()))
}

/// Comma-separated ports, possibly empty.
fn validate_port_list(list: &str) -> Result<(), String> {
    let list = list.trim();
    if list.is_empty() {
        return Ok(());
    }
    for p in list.split(',') {
        parse_port(p)?;
    }
    Ok(())
}

/// Comma-separated network interface names (Linux: at most 15 bytes, no `/`, `:` or spaces).
fn validate_interfaces(list: &str) -> Result<(), String> {
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name.len() > 15
            || name
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(format!("{name:?} is not a network interface name"));
        }
    }
    Ok(())
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Envoy's log level names (Istio's `sidecar.istio.io/logLevel`) → sluice's.
fn proxy_log_level(level: &str) -> Option<&'static str> {
    Some(match level {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        _ => return None,
    })
}

/// A Kubernetes resource quantity: a decimal number with an optional exponent or unit suffix
/// (`100m`, `0.5`, `1e3`, `128Mi`, `2G`).
pub fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let valid_number = number.chars().filter(|c| *c == '.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    if !valid_number {
        return false;
    }
    match suffix {
        "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti"
        | "Pi" | "Ei" => true,
        exp => {
            let Some(rest) = exp.strip_prefix(['e', 'E']) else {
                return false;
            };
            let rest = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn annotations(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect()
    }

    #[test]
    fn defaults_are_istios() {
        let (s, w) = read(&Map::new(), &Map::new()).unwrap();
        assert!(w.is_empty());
        assert_eq!(s.interception, Interception::Redirect);
        assert_eq!(s.include_outbound_ip_ranges, "*");
        assert_eq!(s.exclude_outbound_ip_ranges, "");
        assert_eq!(s.include_inbound_ports, "*");
        assert_eq!(s.exclude_inbound_ports, "");
        assert_eq!(s.exclude_outbound_ports, None);
        assert_eq!(
            s.readiness,
            Some(Readiness {
                initial_delay_seconds: 0,
                period_seconds: 15,
                failure_threshold: 4
            })
        );
        assert!(s.merge_metrics);
    }

    #[test]
    fn invalid_values_name_the_annotation() {
        for (name, value, expect) in [
            (
                names::INCLUDE_OUTBOUND_IP_RANGES,
                "10.0.0.0/33",
                "not a CIDR",
            ),
            (names::EXCLUDE_OUTBOUND_IP_RANGES, "*", "not a CIDR"),
            (names::EXCLUDE_INBOUND_PORTS, "80,http", "not a port"),
            (names::INCLUDE_INBOUND_PORTS, "70000", "not a port"),
            (names::EXCLUDE_OUTBOUND_PORTS, "x", "not a port"),
            (names::INTERCEPTION_MODE, "MAGIC", "REDIRECT,TPROXY,NONE"),
            (names::PROXY_CPU, "lots", "quantity"),
            (names::READINESS_PERIOD, "-1", "non-negative"),
            (names::MERGE_METRICS, "maybe", "true or false"),
            (names::PROXY_CONFIG, "concurrency: two", "concurrency"),
            (names::PROXY_CONFIG, "[1, 2]", "mapping"),
            (
                names::PROXY_CONFIG,
                "terminationDrainDuration: soon",
                "duration",
            ),
        ] {
            let err = read(&annotations(&[(name, value)]), &Map::new()).unwrap_err();
            assert_eq!(err.annotation.as_deref(), Some(name));
            assert!(
                err.message.contains(expect),
                "{name}={value}: {}",
                err.message
            );
            assert!(err.message.contains(name), "{}", err.message);
        }
    }

    #[test]
    fn proxy_config_applies_what_sluice_supports_and_warns_about_the_rest() {
        let mesh = json!({"concurrency": 4, "proxyMetadata": {"A": "1"}, "tracing": {}});
        let (s, w) = read(
            &annotations(&[(
                names::PROXY_CONFIG,
                "holdApplicationUntilProxyStarts: true\nterminationDrainDuration: 20s\n\
                 proxyMetadata: {B: \"2\"}\ntracing: {sampling: 10}\nfrobnicate: 1\n",
            )]),
            mesh.as_object().unwrap(),
        )
        .unwrap();
        assert!(s.proxy.hold_application_until_proxy_starts);
        assert_eq!(s.proxy.concurrency, Some(4));
        assert_eq!(s.proxy.termination_drain_duration.as_deref(), Some("20s"));
        assert_eq!(
            s.proxy.proxy_metadata,
            vec![("A".into(), "1".into()), ("B".into(), "2".into())]
        );
        let messages: Vec<_> = w.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "ProxyConfig field tracing is not supported by sluice; ignored",
                "unknown ProxyConfig field frobnicate; ignored"
            ]
        );
    }

    #[test]
    fn quantities() {
        for q in [
            "100m", "0.5", "2", "128Mi", "1Gi", "1e3", ".5", "+1k", "1E-2",
        ] {
            assert!(is_quantity(q), "{q}");
        }
        for q in ["", "m", "1.2.3", "10 m", "1x", "1e", "Mi", "1mi"] {
            assert!(!is_quantity(q), "{q}");
        }
    }
}
