//! `sluice proxy-config cluster|listener|route|endpoint`: what a running proxy is doing, read from
//! its admin API (`/config_dump`, `/clusters?format=json`, `/listeners`) and printed as
//! `istioctl proxy-config` prints it (same table headers, same notation in the cells).
//!
//! The admin API is reached with the blocking GET of [`crate::http_get`]: it is local, small and
//! answered at once, so no async client is needed.

use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::http_get::{self, parse_response, Step};

/// Spaces between table columns (istioctl's tabwriter padding).
const PADDING: usize = 5;

/// `sluice proxy-config` arguments.
#[derive(clap::Args, Debug)]
pub struct ProxyConfigArgs {
    /// What to show.
    #[arg(value_enum)]
    pub kind: ConfigKind,
    /// Admin API address of the proxy (its --admin-port on 127.0.0.1).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: String,
    /// Output format: a table (short), or the admin API's data for the asked section only, as
    /// JSON or YAML.
    #[arg(short = 'o', long = "output", value_enum, default_value = "short")]
    pub output: OutputFormat,
}

/// The `istioctl proxy-config` subcommands sluice answers.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigKind {
    /// Clusters: SERVICE FQDN, PORT, SUBSET, DIRECTION, TYPE, DESTINATION RULE.
    #[value(alias = "c", alias = "clusters")]
    Cluster,
    /// Listeners: ADDRESSES, PORT, MATCH, DESTINATION.
    #[value(alias = "l", alias = "listeners")]
    Listener,
    /// HTTP routes: NAME, VHOST NAME, DOMAINS, MATCH, VIRTUAL SERVICE.
    #[value(alias = "r", alias = "routes")]
    Route,
    /// Endpoints: ENDPOINT, STATUS, OUTLIER CHECK, CLUSTER.
    #[value(alias = "ep", alias = "endpoints")]
    Endpoint,
}

/// `-o` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Short,
    Json,
    Yaml,
}

/// Runs the command, printing to stdout.
pub fn run(args: &ProxyConfigArgs) -> anyhow::Result<()> {
    let out = render(args)?;
    print!("{out}");
    Ok(())
}

/// Fetches what `args` asks for and renders it.
pub fn render(args: &ProxyConfigArgs) -> anyhow::Result<String> {
    let admin = LocalApi::new(&args.admin, ADMIN)?;
    match (args.kind, args.output) {
        (kind, OutputFormat::Json | OutputFormat::Yaml) => {
            let data = section(&admin, kind)?;
            if args.output == OutputFormat::Yaml {
                Ok(sluice_kube::inject::yaml::to_yaml(&data))
            } else {
                pretty(&data)
            }
        }
        (ConfigKind::Cluster, _) => Ok(cluster_table(&admin.get_json("/config_dump")?)),
        (ConfigKind::Listener, _) => {
            let dump = admin.get_json("/config_dump")?;
            let listeners = admin.get_text("/listeners")?;
            Ok(listener_table(&dump, &listeners))
        }
        (ConfigKind::Route, _) => Ok(route_table(&admin.get_json("/config_dump")?)),
        (ConfigKind::Endpoint, _) => Ok(endpoint_table(&admin.get_json("/clusters?format=json")?)),
    }
}

/// The part of the admin API's state that `kind` is about, for `-o json|yaml`: an object with
/// the dump's keys for it (`clusters`; `listeners` with the `services` a sidecar's outbound
/// listener routes, or a gateway's `gateway_ports`; `virtual_hosts` and the TLS/TCP routes, or
/// a gateway's `gateway_routes`), or `/clusters?format=json` for endpoints.
fn section(admin: &LocalApi, kind: ConfigKind) -> anyhow::Result<Value> {
    if kind == ConfigKind::Endpoint {
        return admin.get_json("/clusters?format=json");
    }
    let dump = admin.get_json("/config_dump")?;
    let keys: &[&str] = match (kind, is_gateway(&dump)) {
        (ConfigKind::Cluster, _) => &["clusters"],
        (ConfigKind::Listener, false) => &["services"],
        (ConfigKind::Listener, true) => &["gateway_ports", "listener_errors"],
        (ConfigKind::Route, false) => &["virtual_hosts", "tls_routes", "tcp_routes"],
        (ConfigKind::Route, true) => &["gateway_routes"],
        (ConfigKind::Endpoint, _) => &[],
    };
    let mut out = serde_json::Map::new();
    if kind == ConfigKind::Listener {
        let text = admin.get_text("/listeners")?;
        let bound: Vec<Value> = text
            .lines()
            .filter_map(|l| l.split_once("::"))
            .map(|(name, address)| serde_json::json!({"name": name, "address": address}))
            .collect();
        out.insert("listeners".into(), Value::Array(bound));
    }
    for key in keys {
        if let Some(v) = dump.get(*key) {
            out.insert((*key).to_string(), v.clone());
        }
    }
    Ok(Value::Object(out))
}

fn pretty(v: &Value) -> anyhow::Result<String> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    Ok(s)
}

// === Admin API client ===

/// A local operator HTTP API that a command reads (a proxy's admin API, the control plane's
/// monitoring port), with the words its errors use.
pub(crate) struct LocalApi {
    addr: SocketAddr,
    name: String,
    role: ApiRole,
}

/// How errors name a [`LocalApi`]: the flag that gave its address, what it is, and what the
/// user should check when it cannot be reached.
pub(crate) struct ApiRole {
    /// `--admin`.
    pub flag: &'static str,
    /// `the proxy's admin API`.
    pub what: &'static str,
    /// `is the proxy running, and is --admin its admin port?`
    pub hint: &'static str,
    /// `a sluice or Envoy admin port`, for an answer that is not JSON.
    pub kind: &'static str,
    /// The User-Agent.
    pub agent: &'static str,
}

/// A proxy's admin API.
const ADMIN: ApiRole = ApiRole {
    flag: "--admin",
    what: "the proxy's admin API",
    hint: "is the proxy running, and is --admin its admin port?",
    kind: "a sluice or Envoy admin port",
    agent: "sluice-proxy-config",
};

impl LocalApi {
    pub(crate) fn new(addr: &str, role: ApiRole) -> anyhow::Result<LocalApi> {
        let flag = role.flag;
        let resolved = addr
            .to_socket_addrs()
            .with_context(|| format!("{flag} {addr}: not a host:port address"))?
            .next()
            .with_context(|| format!("{flag} {addr}: resolves to no address"))?;
        Ok(LocalApi {
            addr: resolved,
            name: addr.to_string(),
            role,
        })
    }

    pub(crate) fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let body = self.get_text(path)?;
        serde_json::from_str(&body).with_context(|| {
            format!(
                "GET http://{}{path}: the answer is not JSON (is {} {}?)",
                self.name, self.name, self.role.kind
            )
        })
    }

    fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let url = format!("http://{}{path}", self.name);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            self.name, self.role.agent
        );
        let raw = http_get::exchange(&self.addr, &request).map_err(|(step, e)| {
            let e = anyhow::Error::new(e);
            match step {
                Step::Connect => e.context(format!(
                    "cannot connect to {} at {}: {}",
                    self.role.what, self.name, self.role.hint
                )),
                Step::Send => e.context(format!("GET {url}: cannot send the request")),
                Step::Receive => e.context(format!("GET {url}: cannot read the answer")),
            }
        })?;
        let (status, body) = parse_response(&raw).with_context(|| format!("GET {url}"))?;
        if status != 200 {
            bail!("GET {url}: HTTP {status}: {}", body.trim());
        }
        Ok(body)
    }
}

// === Tables ===

/// Aligned columns, `PADDING` spaces apart; the last column is not padded.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            l.push_str(cell);
            if i + 1 < widths.len() {
                let pad = widths[i] + PADDING - cell.chars().count();
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

fn is_gateway(dump: &Value) -> bool {
    dump.pointer("/proxy/kind").and_then(Value::as_str) == Some("Gateway")
}

/// `VirtualService ns/name …` or `DestinationRule ns/name` → `name.ns` (istioctl's notation).
fn resource_ref(source: &str, kind: &str) -> String {
    let Some(rest) = source.strip_prefix(kind).map(str::trim) else {
        return "-".to_string();
    };
    let id = rest.split_whitespace().next().unwrap_or("");
    match id.split_once('/') {
        Some((ns, name)) => format!("{name}.{ns}"),
        None => dash(id),
    }
}

/// `outbound|80|v1|httpbin.org` → (fqdn, port, subset, direction).
fn split_cluster_name(name: &str) -> (String, String, String, String) {
    let parts: Vec<&str> = name.split('|').collect();
    if parts.len() == 4 {
        (
            parts[3].to_string(),
            dash(parts[1]),
            dash(parts[2]),
            dash(parts[0]),
        )
    } else {
        (name.to_string(), "-".into(), "-".into(), "-".into())
    }
}

/// `SERVICE FQDN  PORT  SUBSET  DIRECTION  TYPE  DESTINATION RULE`, with Istio's special
/// clusters (`BlackHoleCluster`, `PassthroughCluster`, `InboundPassthroughCluster`).
pub fn cluster_table(dump: &Value) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    for c in dump
        .get("clusters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = str_of(c, "name");
        let (fqdn, port, subset, direction) = split_cluster_name(name);
        let ty = dash(str_of(c, "type"));
        let dr = c
            .get("policy_source")
            .and_then(Value::as_str)
            .map_or_else(|| "-".to_string(), |s| resource_ref(s, "DestinationRule"));
        rows.push(vec![fqdn, port, subset, direction, ty, dr]);
    }
    let special = |name: &str, ty: &str| {
        vec![
            name.to_string(),
            "-".into(),
            "-".into(),
            "-".into(),
            ty.to_string(),
            "-".into(),
        ]
    };
    rows.push(special("BlackHoleCluster", "STATIC"));
    if !is_gateway(dump) {
        rows.push(special("PassthroughCluster", "ORIGINAL_DST"));
        rows.push(special("InboundPassthroughCluster", "ORIGINAL_DST"));
    }
    rows.sort_by(|a, b| {
        (&a[0], a[1].parse::<u32>().unwrap_or(0), &a[2]).cmp(&(
            &b[0],
            b[1].parse::<u32>().unwrap_or(0),
            &b[2],
        ))
    });
    table(
        &[
            "SERVICE FQDN",
            "PORT",
            "SUBSET",
            "DIRECTION",
            "TYPE",
            "DESTINATION RULE",
        ],
        &rows,
    )
}

fn protocol_of(port: &Value) -> &str {
    str_of(port, "protocol")
}

fn is_http_protocol(p: &str) -> bool {
    matches!(p, "Http" | "Http2" | "Grpc" | "GrpcWeb")
}

fn is_tls_protocol(p: &str) -> bool {
    matches!(p, "Https" | "Tls")
}

fn outbound_is_registry_only(dump: &Value) -> bool {
    dump.pointer("/mesh/outbound_policy")
        .and_then(Value::as_str)
        .is_some_and(|p| p.eq_ignore_ascii_case("RegistryOnly"))
}

/// `ADDRESSES  PORT  MATCH  DESTINATION`: one row per service port the outbound side routes
/// (HTTP ports by route table, TLS ports by SNI, TCP ports by address), then the listeners the
/// proxy has bound (`/listeners`).
pub fn listener_table(dump: &Value, listeners_text: &str) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let gateway = is_gateway(dump);
    if !gateway {
        let mut http_ports = std::collections::BTreeSet::new();
        for svc in dump
            .get("services")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let host = str_of(svc, "hostname");
            let addresses: Vec<String> = svc
                .get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|a| a.trim_end_matches("/32").to_string())
                .collect();
            let addresses = if addresses.is_empty() {
                "0.0.0.0".to_string()
            } else {
                addresses.join(",")
            };
            for port in svc
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let number = port.get("number").and_then(Value::as_u64).unwrap_or(0);
                let protocol = protocol_of(port);
                let cluster = format!("Cluster: outbound|{number}||{host}");
                if is_http_protocol(protocol) {
                    if http_ports.insert(number) {
                        rows.push(vec![
                            "0.0.0.0".into(),
                            number.to_string(),
                            "ALL".into(),
                            format!("Route: {number}"),
                        ]);
                    }
                } else if is_tls_protocol(protocol) {
                    rows.push(vec![
                        addresses.clone(),
                        number.to_string(),
                        format!("SNI: {host}"),
                        cluster,
                    ]);
                } else {
                    rows.push(vec![
                        addresses.clone(),
                        number.to_string(),
                        "ALL".into(),
                        cluster,
                    ]);
                }
            }
        }
    }
    let catch_all = if outbound_is_registry_only(dump) {
        "BlackHoleCluster"
    } else {
        "PassthroughCluster"
    };
    for line in listeners_text.lines() {
        let Some((name, addr)) = line.split_once("::") else {
            continue;
        };
        let (ip, port) = match addr.parse::<SocketAddr>() {
            Ok(sa) => (sa.ip().to_string(), sa.port().to_string()),
            Err(_) => (addr.to_string(), "-".to_string()),
        };
        let destination = match name {
            "virtualOutbound" => catch_all.to_string(),
            "virtualInbound" => "InboundPassthroughCluster".to_string(),
            "explicitProxy" => "Explicit proxy (HTTP absolute-URI, CONNECT)".to_string(),
            _ if gateway => format!("Route: http.{port}"),
            other => sidecar_listener_destination(dump, other).unwrap_or_else(|| other.to_string()),
        };
        rows.push(vec![ip, port, "ALL".into(), destination]);
    }
    rows.sort_by_key(|r| (r[1].parse::<u32>().unwrap_or(u32::MAX), r[0].clone()));
    table(&["ADDRESSES", "PORT", "MATCH", "DESTINATION"], &rows)
}

/// What a listener the Sidecar resource had the proxy bind (`captureMode: NONE`) leads to, from
/// the dump's `sidecar_listeners`: egress ones route among their hosts, ingress ones deliver to
/// their `inbound|PORT||` cluster.
fn sidecar_listener_destination(dump: &Value, name: &str) -> Option<String> {
    let listener = dump
        .get("sidecar_listeners")
        .and_then(Value::as_array)?
        .iter()
        .find(|l| str_of(l, "name") == name)?;
    let port = name.rsplit('_').next().unwrap_or("");
    if str_of(listener, "direction") == "inbound" {
        return Some(format!(
            "Sidecar ingress, Cluster: {}",
            str_of(listener, "cluster")
        ));
    }
    let hosts: Vec<&str> = listener
        .get("hosts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    Some(format!(
        "Sidecar egress, Route: {port} ({})",
        if hosts.is_empty() {
            "no hosts".to_string()
        } else {
            hosts.join(", ")
        }
    ))
}

/// `NAME  VHOST NAME  DOMAINS  MATCH  VIRTUAL SERVICE`: one row per route match of each
/// virtual host, under the route table of each HTTP port its host declares (`http.<port>` on a
/// gateway), then the catch-all of each port (`allow_any` or `block_all`).
pub fn route_table(dump: &Value) -> String {
    let gateway = is_gateway(dump);
    if gateway {
        return gateway_route_table(dump);
    }
    let services: Vec<&Value> = dump
        .get("services")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let http_ports_of = |domain: &str| -> Vec<u64> {
        let mut ports: Vec<u64> = services
            .iter()
            .filter(|s| host_matches(domain, str_of(s, "hostname")))
            .flat_map(|s| {
                s.get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .filter(|p| is_http_protocol(protocol_of(p)))
            .filter_map(|p| p.get("number").and_then(Value::as_u64))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    };
    let table_name = |port: Option<u64>| match (port, gateway) {
        (Some(p), false) => p.to_string(),
        (Some(p), true) => format!("http.{p}"),
        (None, _) => "-".to_string(),
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut all_ports = std::collections::BTreeSet::new();
    for vh in dump
        .get("virtual_hosts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let domain = str_of(vh, "domain");
        let vs = resource_ref(str_of(vh, "source"), "VirtualService");
        let ports: Vec<Option<u64>> = match http_ports_of(domain) {
            p if p.is_empty() => vec![None],
            p => p.into_iter().map(Some).collect(),
        };
        for port in ports {
            if let Some(p) = port {
                all_ports.insert(p);
            }
            let vhost = match port {
                Some(p) => format!("{domain}:{p}"),
                None => domain.to_string(),
            };
            let routes = vh.get("routes").and_then(Value::as_array);
            let mut any = false;
            for route in routes.into_iter().flatten() {
                let rule_vs = resource_ref(str_of(route, "source"), "VirtualService");
                let vs = if rule_vs == "-" { vs.clone() } else { rule_vs };
                let matches: Vec<String> = route
                    .get("matches")
                    .and_then(Value::as_array)
                    .map(|m| {
                        m.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .filter(|m: &Vec<String>| !m.is_empty())
                    .unwrap_or_else(|| vec!["/*".to_string()]);
                for m in matches {
                    any = true;
                    rows.push(vec![
                        table_name(port),
                        vhost.clone(),
                        domain.to_string(),
                        m,
                        vs.clone(),
                    ]);
                }
            }
            if !any {
                rows.push(vec![
                    table_name(port),
                    vhost,
                    domain.to_string(),
                    "/*  404".to_string(),
                    vs.clone(),
                ]);
            }
        }
    }
    if !gateway {
        // Every outbound HTTP route table ends with the catch-all for unknown hosts.
        for s in &services {
            for p in s
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if is_http_protocol(protocol_of(p)) {
                    if let Some(n) = p.get("number").and_then(Value::as_u64) {
                        all_ports.insert(n);
                    }
                }
            }
        }
        let catch_all = if outbound_is_registry_only(dump) {
            "block_all"
        } else {
            "allow_any"
        };
        for p in all_ports {
            rows.push(vec![
                p.to_string(),
                catch_all.to_string(),
                "*".to_string(),
                "/*".to_string(),
                "-".to_string(),
            ]);
        }
    }
    rows.sort_by_key(|r| r[0].trim_start_matches("http.").parse::<u32>().unwrap_or(0));
    table(
        &["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"],
        &rows,
    )
}

/// A gateway's routes: one route table per gateway port (`http.<port>`), one row per route match
/// of each virtual host bound to it; an HTTP port with no virtual host answers everything with
/// 404 (`blackhole:<port>`), as istioctl shows it.
fn gateway_route_table(dump: &Value) -> String {
    let http_ports: std::collections::BTreeSet<u64> = dump
        .get("gateway_ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| {
            p.get("servers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|s| {
                    let protocol = str_of(s, "protocol");
                    let passthrough = s
                        .pointer("/tls/mode")
                        .and_then(Value::as_str)
                        .is_some_and(|m| m.to_ascii_lowercase().contains("passthrough"));
                    is_http_protocol(protocol) || (protocol == "Https" && !passthrough)
                })
        })
        .filter_map(|p| p.get("number").and_then(Value::as_u64))
        .collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for table in dump
        .get("gateway_routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let port = table.get("port").and_then(Value::as_u64).unwrap_or(0);
        let name = match str_of(table, "name") {
            "" => format!("http.{port}"),
            n => n.to_string(),
        };
        let mut any = false;
        for vh in table
            .get("virtual_hosts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let domain = str_of(vh, "domain");
            let vs = resource_ref(str_of(vh, "source"), "VirtualService");
            for route in vh
                .get("routes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let rule_vs = resource_ref(str_of(route, "source"), "VirtualService");
                let vs = if rule_vs == "-" { vs.clone() } else { rule_vs };
                let matches: Vec<String> = route
                    .get("matches")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect();
                let matches = if matches.is_empty() {
                    vec!["/*".to_string()]
                } else {
                    matches
                };
                for m in matches {
                    any = true;
                    rows.push(vec![
                        name.clone(),
                        format!("{domain}:{port}"),
                        domain.to_string(),
                        m,
                        vs.clone(),
                    ]);
                }
            }
        }
        if !any && http_ports.contains(&port) {
            rows.push(vec![
                name,
                format!("blackhole:{port}"),
                "*".to_string(),
                "/*  404".to_string(),
                "-".to_string(),
            ]);
        }
    }
    // Stable: by port, keeping each table's own order (most specific host first).
    rows.sort_by_key(|r| r[0].trim_start_matches("http.").parse::<u32>().unwrap_or(0));
    table(
        &["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"],
        &rows,
    )
}

/// True if the virtual host `domain` (exact or `*.suffix`) covers `host`.
fn host_matches(domain: &str, host: &str) -> bool {
    match domain.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix) || domain == host,
        None => domain == host,
    }
}

/// `ENDPOINT  STATUS  OUTLIER CHECK  CLUSTER` from `/clusters?format=json`.
pub fn endpoint_table(clusters: &Value) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    for c in clusters
        .get("cluster_statuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = str_of(c, "name");
        for h in c
            .get("host_statuses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let sa = h.pointer("/address/socket_address");
            let address = sa.map_or("", |s| str_of(s, "address"));
            let port = sa
                .and_then(|s| s.get("port_value"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let endpoint = if address.contains(':') {
                format!("[{address}]:{port}")
            } else {
                format!("{address}:{port}")
            };
            let health = h.get("health_status");
            let status = health
                .and_then(|s| s.get("eds_health_status"))
                .and_then(Value::as_str)
                .unwrap_or("HEALTHY")
                .to_string();
            let ejected = health
                .and_then(|s| s.get("failed_outlier_check"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let (status, outlier) = if ejected {
                ("UNHEALTHY".to_string(), "FAILED")
            } else {
                (status, "OK")
            };
            rows.push(vec![
                endpoint,
                status,
                outlier.to_string(),
                name.to_string(),
            ]);
        }
    }
    rows.sort();
    table(&["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump() -> Value {
        serde_json::json!({
            "proxy": {"kind": "Sidecar"},
            "mesh": {"outbound_policy": "RegistryOnly"},
            "services": [{
                "hostname": "httpbin.org",
                "addresses": [],
                "ports": [
                    {"number": 80, "name": "http", "protocol": "Http"},
                    {"number": 443, "name": "tls", "protocol": "Tls"},
                    {"number": 5432, "name": "db", "protocol": "Tcp"}
                ]
            }],
            "clusters": [
                {"name": "outbound|80|v1|httpbin.org", "type": "EDS",
                 "policy_source": "DestinationRule default/httpbin"},
                {"name": "outbound|443||httpbin.org", "type": "STRICT_DNS", "policy_source": null}
            ],
            "virtual_hosts": [{
                "domain": "httpbin.org",
                "source": "VirtualService default/httpbin",
                "routes": [
                    {"source": "VirtualService default/httpbin http[0]", "matches": ["/get*", "/ip"]},
                    {"source": "VirtualService default/httpbin http[1]", "matches": ["/*"]}
                ]
            }]
        })
    }

    #[test]
    fn clusters_print_like_istioctl() {
        let out = cluster_table(&dump());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "SERVICE FQDN                  PORT     SUBSET     DIRECTION     TYPE             DESTINATION RULE"
        );
        assert!(
            out.contains("BlackHoleCluster              -        -          -             STATIC"),
            "{out}"
        );
        assert!(
            out.contains("httpbin.org                   80       v1         outbound      EDS              httpbin.default"),
            "{out}"
        );
        assert!(out.contains("httpbin.org                   443      -          outbound      STRICT_DNS       -"), "{out}");
    }

    #[test]
    fn sidecar_bound_listeners_show_where_they_lead() {
        let mut dump = dump();
        dump["sidecar_listeners"] = serde_json::json!([
            {"name": "127.0.0.1_9080", "direction": "outbound", "address": "127.0.0.1:9080",
             "protocol": "Http", "hosts": ["httpbin.default.svc.cluster.local"]},
            {"name": "0.0.0.0_8443", "direction": "inbound", "address": "0.0.0.0:8443",
             "protocol": "Tcp", "cluster": "inbound|8443||"}
        ]);
        let out = listener_table(
            &dump,
            "virtualOutbound::0.0.0.0:15001\n127.0.0.1_9080::127.0.0.1:9080\n0.0.0.0_8443::0.0.0.0:8443\n",
        );
        assert!(
            out.contains("Sidecar egress, Route: 9080 (httpbin.default.svc.cluster.local)"),
            "{out}"
        );
        assert!(
            out.contains("Sidecar ingress, Cluster: inbound|8443||"),
            "{out}"
        );
    }

    #[test]
    fn listeners_routes_and_endpoints() {
        let out = listener_table(
            &dump(),
            "virtualOutbound::0.0.0.0:15001\nexplicitProxy::127.0.0.1:15080\n",
        );
        let rows: Vec<Vec<&str>> = out
            .lines()
            .map(|l| {
                l.split("     ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect();
        assert!(
            rows.contains(&vec!["0.0.0.0", "80", "ALL", "Route: 80"]),
            "{out}"
        );
        assert!(
            rows.contains(&vec![
                "0.0.0.0",
                "443",
                "SNI: httpbin.org",
                "Cluster: outbound|443||httpbin.org"
            ]),
            "{out}"
        );
        assert!(
            rows.contains(&vec!["0.0.0.0", "15001", "ALL", "BlackHoleCluster"]),
            "{out}"
        );

        let out = route_table(&dump());
        let rows: Vec<Vec<&str>> = out
            .lines()
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect();
        assert_eq!(
            rows[0],
            vec!["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"]
        );
        assert!(
            rows.contains(&vec![
                "80",
                "httpbin.org:80",
                "httpbin.org",
                "/get*",
                "httpbin.default"
            ]),
            "{out}"
        );
        assert!(
            rows.contains(&vec![
                "80",
                "httpbin.org:80",
                "httpbin.org",
                "/ip",
                "httpbin.default"
            ]),
            "{out}"
        );
        assert!(
            rows.contains(&vec!["80", "block_all", "*", "/*", "-"]),
            "{out}"
        );

        let clusters = serde_json::json!({"cluster_statuses": [{
            "name": "outbound|80||httpbin.org",
            "host_statuses": [
                {"address": {"socket_address": {"address": "10.0.0.2", "port_value": 80}},
                 "health_status": {"eds_health_status": "HEALTHY"}},
                {"address": {"socket_address": {"address": "10.0.0.3", "port_value": 80}},
                 "health_status": {"eds_health_status": "HEALTHY", "failed_outlier_check": true}}
            ]
        }]});
        let out = endpoint_table(&clusters);
        assert!(
            out.starts_with("ENDPOINT        STATUS        OUTLIER CHECK     CLUSTER\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "10.0.0.2:80     HEALTHY       OK                outbound|80||httpbin.org"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "10.0.0.3:80     UNHEALTHY     FAILED            outbound|80||httpbin.org"
            ),
            "{out}"
        );
    }

    #[test]
    fn http_responses_are_parsed() {
        let (s, b) =
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello trailing").unwrap();
        assert_eq!((s, b.as_str()), (200, "hello"));
        let (s, b) = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s, b.as_str()), (404, "abcde"));
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn connection_errors_name_the_address() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let args = ProxyConfigArgs {
            kind: ConfigKind::Cluster,
            admin: format!("127.0.0.1:{port}"),
            output: OutputFormat::Short,
        };
        let err = format!("{:#}", render(&args).unwrap_err());
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        assert!(err.contains("cannot connect"), "{err}");
    }
}
