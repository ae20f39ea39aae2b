//! `sluice proxy-status`: as `istioctl proxy-status`, each proxy connected to the control plane,
//! the replica it is connected to, and whether what it was sent is what it applied — read from
//! the control plane's `/debug/syncz` (its monitoring port, 15014).
//!
//! Per collection: SYNCED (the proxy ACKed the version it was sent), STALE (sent, not ACKed —
//! in flight, or refused: the NACK's message is shown with `sluice proxy-status NODE`), NOT
//! SENT (subscribed, nothing published for it yet).

use anyhow::bail;
use serde_json::Value;

use crate::proxy_config::{table, ApiRole, LocalApi};

/// `sluice proxy-status` arguments.
#[derive(clap::Args, Debug)]
pub struct ProxyStatusArgs {
    /// One proxy's node id (or a unique part of it): show each of its collections.
    pub node: Option<String>,
    /// The control plane's monitoring address (`sluice control --monitoring-port`).
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub control: String,
    /// Output format: a table (short), or `/debug/syncz` as it is (json, yaml).
    #[arg(short = 'o', long = "output", value_enum, default_value = "short")]
    pub output: crate::proxy_config::OutputFormat,
}

/// Runs the command, printing to stdout.
pub fn run(args: &ProxyStatusArgs) -> anyhow::Result<()> {
    let syncz = fetch(&args.control)?;
    let out = match args.output {
        crate::proxy_config::OutputFormat::Json => {
            let mut s = serde_json::to_string_pretty(&syncz)?;
            s.push('\n');
            s
        }
        crate::proxy_config::OutputFormat::Yaml => sluice_kube::inject::yaml::to_yaml(&syncz),
        crate::proxy_config::OutputFormat::Short => match &args.node {
            None => proxies_table(&syncz, &args.control),
            Some(node) => node_table(&syncz, node)?,
        },
    };
    print!("{out}");
    Ok(())
}

fn fetch(control: &str) -> anyhow::Result<Value> {
    let monitoring = LocalApi::new(
        control,
        ApiRole {
            flag: "--control",
            what: "the control plane's monitoring port",
            hint: "is `sluice control` running, and is --control its --monitoring-port?",
            kind: "a sluice control monitoring port",
            agent: "sluice-proxy-status",
        },
    )?;
    monitoring.get_json("/debug/syncz")
}

/// A collection's state on one proxy.
pub fn sync_state(t: &Value) -> &'static str {
    let sent = t["sent"].as_str().unwrap_or("");
    let acked = t["acked"].as_str().unwrap_or("");
    if sent.is_empty() {
        "NOT SENT"
    } else if sent == acked && t["nacked"].is_null() {
        "SYNCED"
    } else {
        "STALE"
    }
}

/// One row per proxy: NAME, CONTROL PLANE, SYNCED / STALE / NOT SENT counts, VERSION.
pub fn proxies_table(syncz: &Value, control: &str) -> String {
    let mut rows = Vec::new();
    let empty = Vec::new();
    for proxy in syncz.as_array().unwrap_or(&empty) {
        let types = proxy["types"].as_object();
        let mut counts = [0usize; 3];
        let mut versions = std::collections::BTreeSet::new();
        for t in types.into_iter().flat_map(|m| m.values()) {
            match sync_state(t) {
                "SYNCED" => counts[0] += 1,
                "STALE" => counts[1] += 1,
                _ => counts[2] += 1,
            }
            if let Some(v) = t["acked"].as_str().filter(|v| !v.is_empty()) {
                versions.insert(v.to_string());
            }
        }
        let config = match counts {
            [_, 0, 0] => "SYNCED".to_string(),
            [synced, stale, not_sent] => {
                format!("STALE ({synced} synced, {stale} stale, {not_sent} not sent)")
            }
        };
        rows.push(vec![
            proxy["node_id"].as_str().unwrap_or("").to_string(),
            proxy["control_plane"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or(control)
                .to_string(),
            config,
            // The newest acked version (versions are generation numbers: longer is newer).
            versions
                .into_iter()
                .max_by(|a, b| (a.len(), a).cmp(&(b.len(), b)))
                .unwrap_or_default(),
        ]);
    }
    table(&["NAME", "CONTROL PLANE", "CONFIG", "VERSION"], &rows)
}

/// One row per collection of one proxy: TYPE, STATUS, SENT, ACKED, ERROR.
pub fn node_table(syncz: &Value, node: &str) -> anyhow::Result<String> {
    let empty = Vec::new();
    let proxies: Vec<&Value> = syncz
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter(|p| p["node_id"].as_str().is_some_and(|id| id.contains(node)))
        .collect();
    let proxy = match proxies.as_slice() {
        [one] => *one,
        [] => bail!("no connected proxy's node id contains {node:?}"),
        many => bail!(
            "{} proxies' node ids contain {node:?}: {}",
            many.len(),
            many.iter()
                .filter_map(|p| p["node_id"].as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut rows = Vec::new();
    for (type_url, t) in proxy["types"].as_object().into_iter().flatten() {
        rows.push(vec![
            type_url.clone(),
            sync_state(t).to_string(),
            t["sent"].as_str().unwrap_or("").to_string(),
            t["acked"].as_str().unwrap_or("").to_string(),
            t["nacked"].as_str().unwrap_or("").replace('\n', "; "),
        ]);
    }
    Ok(table(&["TYPE", "STATUS", "SENT", "ACKED", "ERROR"], &rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn syncz() -> Value {
        json!([
            {"node_id": "sidecar~0.0.0.0~a.default~default.svc.cluster.local", "peer": "127.0.0.1:1",
             "control_plane": "control-1", "connected_at": 1,
             "types": {"networking.istio.io/v1alpha3/ServiceEntry": {"sent": "3", "acked": "3", "nacked": null},
                       "networking.istio.io/v1alpha3/VirtualService": {"sent": "4", "acked": "3", "nacked": "VirtualService default/x: spec.http[0].timeout: bad"},
                       "core/v1/Service": {"sent": "", "acked": "", "nacked": null}}},
            {"node_id": "sidecar~0.0.0.0~b.default~default.svc.cluster.local", "peer": "127.0.0.1:2",
             "control_plane": "control-1", "connected_at": 1,
             "types": {"networking.istio.io/v1alpha3/ServiceEntry": {"sent": "3", "acked": "3", "nacked": null}}}
        ])
    }

    #[test]
    fn proxies_are_synced_only_when_every_collection_is() {
        let out = proxies_table(&syncz(), "127.0.0.1:15014");
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{out}");
        assert!(
            lines[1].contains("a.default")
                && lines[1].contains("STALE (1 synced, 1 stale, 1 not sent)"),
            "{out}"
        );
        assert!(
            lines[2].contains("b.default") && lines[2].contains("SYNCED"),
            "{out}"
        );
        assert!(lines[2].contains("control-1"), "{out}");
    }

    #[test]
    fn one_node_shows_each_collection_with_the_nack() {
        let out = node_table(&syncz(), "a.default").unwrap();
        assert!(
            out.contains("VirtualService     STALE") || out.contains("STALE"),
            "{out}"
        );
        assert!(out.contains("spec.http[0].timeout: bad"), "{out}");
        assert!(
            out.contains("core/v1/Service") && out.contains("NOT SENT"),
            "{out}"
        );
        assert!(node_table(&syncz(), "default").is_err(), "ambiguous");
        assert!(node_table(&syncz(), "nope").is_err());
    }
}
