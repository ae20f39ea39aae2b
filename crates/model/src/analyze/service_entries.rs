//! ServiceEntries: TCP (or undeclared) ports without `addresses` (IST0134), and one host:port
//! given different protocols by ServiceEntries visible in one namespace (IST0177).

use std::collections::{BTreeMap, BTreeSet};

use sluice_api::{Resource, Spec};

use super::{Message, CONFLICTING_SERVICE_ENTRY_PROTOCOL, SERVICE_ENTRY_ADDRESSES_REQUIRED};

/// (exportTo scope, host, port); scope `*` is every namespace.
type ScopedHostPort = (String, String, u32);

pub(super) fn check(
    resources: &[Resource],
    mesh: Option<&sluice_api::mesh::MeshConfig>,
    out: &mut Vec<Message>,
) {
    // Proxies that allocate addresses themselves need none in the ServiceEntry.
    let auto_allocated = mesh.is_some_and(|m| m.dns_auto_allocates());
    // (scope, host, port) → [(protocol, resource)]; scope "*" is every namespace.
    let mut index: BTreeMap<ScopedHostPort, Vec<(String, &Resource)>> = BTreeMap::new();
    for res in resources {
        let Spec::ServiceEntry(se) = &res.spec else {
            continue;
        };
        // Istio compares the written protocol without case: "" or "TCP".
        if se.addresses.is_empty() && se.allocated_addresses.is_empty() && !auto_allocated {
            for (i, p) in se.ports.iter().enumerate() {
                let proto = p.protocol.as_deref().unwrap_or("");
                if proto.is_empty() || proto.eq_ignore_ascii_case("TCP") {
                    out.push(Message::at(
                        &SERVICE_ENTRY_ADDRESSES_REQUIRED,
                        res,
                        &format!("spec.ports[{i}]"),
                        "ServiceEntry addresses are required for this protocol.",
                    ));
                }
            }
        }
        let scopes: BTreeSet<String> =
            if se.export_to.is_empty() || se.export_to.iter().any(|e| e == "*") {
                BTreeSet::from(["*".to_string()])
            } else {
                se.export_to
                    .iter()
                    .map(|e| {
                        if e == "." {
                            res.meta.namespace.clone()
                        } else {
                            e.clone()
                        }
                    })
                    .collect()
            };
        for scope in &scopes {
            for h in &se.hosts {
                for p in &se.ports {
                    index
                        .entry((scope.clone(), h.to_ascii_lowercase(), p.number))
                        .or_default()
                        .push((
                            p.protocol.as_deref().unwrap_or("").to_ascii_uppercase(),
                            res,
                        ));
                }
            }
        }
    }
    let mut reported = BTreeSet::new();
    for ((scope, host, port), entries) in &index {
        let mut entries: Vec<(String, &Resource)> = entries.clone();
        if scope != "*" {
            if let Some(all) = index.get(&("*".to_string(), host.clone(), *port)) {
                entries.extend(all.iter().cloned());
            }
        }
        let protocols: BTreeSet<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
        if protocols.len() < 2 {
            continue;
        }
        let names: BTreeSet<String> = entries.iter().map(|(_, r)| r.key()).collect();
        let names: Vec<String> = names.into_iter().collect();
        let protocols: Vec<&str> = protocols.into_iter().collect();
        for (_, res) in &entries {
            if !reported.insert(res.key()) {
                continue;
            }
            out.push(Message::at(
                &CONFLICTING_SERVICE_ENTRY_PROTOCOL,
                res,
                "metadata.name",
                format!(
                    "Multiple ServiceEntries ({}) define the same host {host:?} and port {port} with conflicting protocols ({}).",
                    names.join(", "),
                    protocols.join(", ")
                ),
            ));
        }
    }
}
