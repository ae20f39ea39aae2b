//! Scoping by the `Sidecar` resource: a sidecar proxy that a Sidecar applies to receives only
//! the services, VirtualServices and DestinationRules that Sidecar imports, as istiod's
//! `SidecarScope` limits what it sends each proxy.
//!
//! The proxy applies its Sidecar itself as well (the model does, from the resources it gets),
//! so what is withheld here is only ever what it would not have used. Where the two could
//! disagree, this side sends more, never less:
//! - every service of the proxy's own namespace is sent (its inbound side needs the services
//!   that select it, imported or not);
//! - a VirtualService's destinations are sent in every namespace that has their host (the
//!   proxy picks one);
//! - a DestinationRule is sent when its host intersects an imported service's;
//! - a ServiceEntry that makes no service of its own (its hosts are Kubernetes Services') is
//!   sent.
//!
//! Which Sidecar applies depends on the proxy's namespace and labels, which only its stream
//! knows: imports are computed when the first proxy of a (Sidecar, namespace) asks, once per
//! publish, and shared by every stream of it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use sluice_api::{Kind, Resource, Spec};
use sluice_model::host::{resolve_short_name, HostIndex};
use sluice_model::registry::{services_from, Service};
use sluice_model::sidecar_scope::{self, SidecarScope};
use sluice_model::snapshot::{ProxyIdentity, ProxyKind};
use sluice_xds::server::{ImportSet, PeerScope, SelectSidecar, SidecarImports};

/// Whether resources of `kind` are scoped by Sidecars.
pub fn scoped_kind(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::ServiceEntry
            | Kind::Service
            | Kind::Endpoints
            | Kind::VirtualService
            | Kind::DestinationRule
    )
}

/// One publish's Sidecars, and what they import for the proxies that ask.
pub struct SidecarSelection {
    /// The publish's resources (kept only when it has a Sidecar).
    resources: Vec<Resource>,
    /// Its Sidecars, oldest first.
    sidecars: Vec<Resource>,
    root_namespace: String,
    /// Where each scoped resource was published: (index in `resources`, collection, position).
    placed: Vec<(usize, String, usize)>,
    /// The publish's services, built when first needed.
    services: OnceLock<Vec<Arc<Service>>>,
    /// (Sidecar, proxy namespace) → what it imports.
    resolved: Mutex<HashMap<SidecarInNamespace, Arc<SidecarImports>>>,
    /// (proxy namespace, labels) → the imports of the Sidecar that applies.
    selected: Mutex<HashMap<Workload, Option<Arc<SidecarImports>>>>,
}

/// A Sidecar (its `Sidecar ns/name`) as resolved for the proxies of one namespace.
type SidecarInNamespace = (Arc<str>, String);

/// A proxy as Sidecar selection sees it: its namespace and labels.
type Workload = (String, BTreeMap<String, String>);

impl std::fmt::Debug for SidecarSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarSelection")
            .field("sidecars", &self.sidecars.len())
            .finish()
    }
}

impl SidecarSelection {
    /// The selection for a publish of `resources`, where `placed` says which collection and
    /// position each scoped resource went to; `None` when there is no Sidecar (nothing is
    /// scoped).
    pub fn new(
        resources: &[Resource],
        placed: Vec<(usize, String, usize)>,
    ) -> Option<SidecarSelection> {
        let sidecars: Vec<Resource> = resources
            .iter()
            .filter(|r| matches!(r.spec, Spec::Sidecar(_)))
            .cloned()
            .collect();
        if sidecars.is_empty() {
            return None;
        }
        Some(SidecarSelection {
            root_namespace: sluice_model::mesh::MeshSettings::from_resources(resources)
                .root_namespace,
            resources: resources.to_vec(),
            sidecars,
            placed,
            services: OnceLock::new(),
            resolved: Mutex::default(),
            selected: Mutex::default(),
        })
    }

    /// What `scope` imports for proxies of namespace `ns`.
    fn imports(&self, scope: &SidecarScope, ns: &str) -> SidecarImports {
        let services = self.services.get_or_init(|| services_from(&self.resources));
        let destinations: HashSet<String> =
            sidecar_scope::imported_destination_hosts(scope, &self.resources, ns)
                .into_iter()
                .collect();
        let mut imported_sources: HashSet<&str> = HashSet::new();
        let mut making_services: HashSet<&str> = HashSet::new();
        let mut imported_hosts = HostIndex::default();
        for s in services.iter() {
            making_services.insert(&s.source);
            if *s.namespace == *ns
                || scope.imports_service(s)
                || destinations.contains(&*s.hostname)
            {
                imported_sources.insert(&s.source);
                imported_hosts.insert(&s.hostname, ());
            }
        }
        let virtual_services: HashSet<String> =
            sidecar_scope::imported_virtual_services(scope, &self.resources, ns)
                .map(|(r, _)| r.key())
                .collect();
        let mut collections: BTreeMap<String, HashSet<usize>> = BTreeMap::new();
        for (index, collection, position) in &self.placed {
            let res = &self.resources[*index];
            let source = format!("{} {}", res.kind, res.key());
            let imported = match &res.spec {
                Spec::ServiceEntry(_) => {
                    imported_sources.contains(source.as_str())
                        || !making_services.contains(source.as_str())
                }
                Spec::Service(_) => imported_sources.contains(source.as_str()),
                Spec::Endpoints(_) => {
                    imported_sources.contains(format!("Service {}", res.key()).as_str())
                }
                Spec::VirtualService(_) => virtual_services.contains(&res.key()),
                Spec::DestinationRule(dr) => imported_hosts
                    .any_intersecting(&resolve_short_name(&dr.host, &res.meta.namespace)),
                _ => true,
            };
            let set = collections.entry(collection.clone()).or_default();
            if imported {
                set.insert(*position);
            }
        }
        SidecarImports {
            key: format!("{} for {ns}", scope.source).into(),
            collections: collections
                .into_iter()
                .map(|(c, set)| (c, ImportSet::new(set)))
                .collect(),
        }
    }
}

impl SelectSidecar for SidecarSelection {
    fn select(&self, peer: &PeerScope) -> Option<Arc<SidecarImports>> {
        let key = (peer.namespace.clone(), peer.labels.clone());
        if let Some(found) = lock(&self.selected).get(&key) {
            return found.clone();
        }
        let proxy = ProxyIdentity {
            namespace: peer.namespace.clone(),
            labels: peer.labels.clone(),
            service_account: None,
            kind: ProxyKind::Sidecar,
        };
        let (scope, _) = sidecar_scope::select(&self.sidecars, &proxy, &self.root_namespace);
        let imports = scope.map(|scope| {
            let resolved_key = (scope.source.clone(), peer.namespace.clone());
            if let Some(found) = lock(&self.resolved).get(&resolved_key) {
                return found.clone();
            }
            let imports = Arc::new(self.imports(&scope, &peer.namespace));
            lock(&self.resolved).insert(resolved_key, imports.clone());
            imports
        });
        lock(&self.selected).insert(key, imports.clone());
        imports
    }
}

/// The caches hold only complete entries: usable after a panic elsewhere.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
