//! `sluice explain --config DIR --from ns/k=v URL`: what a sidecar (or, with `--gateway`, a
//! gateway) would do with one request, and why. The config is loaded by the proxies' own store
//! and the decision made by the data path's routing functions; see [`sluice_model::explain`].

use std::path::PathBuf;

use sluice_model::explain::{explain, render, Explanation, Probe};
use sluice_model::{ProxyIdentity, ProxyKind};
use sluice_proxy::store::ConfigStore;

/// Output formats.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExplainOutput {
    Text,
    Json,
}

/// Options of `sluice explain`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "\
URL forms:
  http://host[:port]/path   an HTTP request (port 80 when omitted; https:// uses 443)
  tls://sni:port            a TLS connection routed by SNI
  tcp://ip:port             an opaque TCP connection

Examples:
  sluice explain --config ./istio --from default/app=sleep http://httpbin.org/get
  sluice explain --config ./istio --from default/app=sleep -H 'end-user: jason' http://reviews:9080/
  sluice explain --config ./istio --gateway --from istio-system/istio=egressgateway tls://api.example.com:443")]
pub struct ExplainArgs {
    /// Istio/Kubernetes YAML, a directory or one file, as given to `sluice sidecar`/`gateway
    /// --config`.
    #[arg(long, value_name = "FILE|DIR")]
    pub config: PathBuf,
    /// The proxy: `NAMESPACE/k=v,k=v`, `NAMESPACE`, or `k=v,…` (namespace `default` for a
    /// sidecar, `istio-system` for a gateway).
    #[arg(long, default_value = "")]
    pub from: String,
    /// Explain for a gateway proxy (`sluice gateway`) with these labels (default
    /// istio=ingressgateway); the URL's port is the gateway port the request arrives on.
    #[arg(long)]
    pub gateway: bool,
    /// A request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// The HTTP method.
    #[arg(short = 'X', long = "request", default_value = "GET")]
    pub method: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: ExplainOutput,
    /// What to explain: http://host[:port]/path, https://…, tls://sni:port or tcp://ip:port.
    pub url: String,
}

/// Parses `--from`.
pub fn parse_from(from: &str, gateway: bool) -> Result<ProxyIdentity, String> {
    let (ns, labels) = match from.split_once('/') {
        Some((ns, labels)) => (ns.trim(), labels.trim()),
        None if from.contains('=') => ("", from.trim()),
        None => (from.trim(), ""),
    };
    let mut parsed = sluice_api::networking::Labels::new();
    for kv in labels.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                parsed.insert(k.to_string(), v.to_string());
            }
            _ => return Err(format!("--from: label {kv:?} is not k=v")),
        }
    }
    if gateway && parsed.is_empty() {
        parsed.insert("istio".into(), "ingressgateway".into());
    }
    let namespace = match (ns.is_empty(), gateway) {
        (false, _) => ns.to_string(),
        (true, true) => "istio-system".to_string(),
        (true, false) => "default".to_string(),
    };
    Ok(ProxyIdentity {
        namespace,
        labels: parsed,
        service_account: None,
        kind: if gateway {
            ProxyKind::Gateway
        } else {
            ProxyKind::Sidecar
        },
    })
}

/// The explanation for `args`.
pub fn explanation(args: &ExplainArgs) -> Result<Explanation, String> {
    let proxy = parse_from(&args.from, args.gateway)?;
    let mut headers = Vec::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("-H {h:?}: expected 'name: value'"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let probe = Probe::parse(&args.url, &args.method, &headers)?;
    if !args.config.exists() {
        return Err(format!(
            "--config {}: no such file or directory",
            args.config.display()
        ));
    }
    let mut store = ConfigStore::new(args.config.clone(), proxy);
    store.rescan();
    let snap = store.snapshot().load_full();
    Ok(explain(&snap, &probe))
}

/// Prints the explanation; 0, or 1 when the input is wrong.
pub fn run(args: &ExplainArgs) -> i32 {
    match explanation(args) {
        Ok(e) => {
            match args.output {
                ExplainOutput::Text => print!("{}", render(&e)),
                ExplainOutput::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&e).unwrap_or_else(|_| "{}".into())
                ),
            }
            0
        }
        Err(e) => {
            eprintln!("sluice explain: {e}");
            1
        }
    }
}
