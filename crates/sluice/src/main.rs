//! The `sluice` command line.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use sluice::{analyze_cmd, ca, dashboard, demo, explain_cmd, init, suggest_cmd, validate_cmd};
use sluice_proxy::gateway::{self, GatewayOptions};
use sluice_proxy::identity::{CaOptions, IdentityOptions};
use sluice_proxy::runtime::ConfigSource;
use sluice_proxy::sidecar::{self, SidecarOptions};

/// Istio's traffic control (sidecar, gateways) as one small, fast binary that reads the Istio
/// networking API as you already write it.
#[derive(Parser, Debug)]
#[command(name = "sluice", version = sluice::version_cmd::LONG_VERSION, about, long_about = None)]
struct Cli {
    /// Log level for sluice's own logs on stderr (error, warn, info, debug, trace), or a
    /// tracing filter such as `sluice_proxy=debug`. Access logs go where the mesh config says.
    /// [default: info for the proxies, the demo and the dashboard; warn for one-shot commands]
    #[arg(long, global = true, env = "SLUICE_LOG")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run next to an application: captured outbound traffic (iptables → 15001), captured inbound
    /// traffic (iptables → 15006) and an explicit forward proxy (15080), with the policy of the
    /// Istio config in --config.
    Sidecar(SidecarArgs),
    /// Run as an ingress or egress gateway: listen on the ports of the Gateway servers selected
    /// by --labels, terminate or pass through TLS per server, and route with the VirtualServices
    /// bound to those Gateways.
    Gateway(GatewayArgs),
    /// Set up iptables capture as istio-iptables does (same flags, chains and rule order).
    Init(Box<init::InitArgs>),
    /// Check Istio and Kubernetes YAML as Istio's admission webhook would; one line per problem
    /// ("file:line: Kind ns/name: field: message"), exit 1 if any is an error.
    Validate(validate_cmd::ValidateArgs),
    /// Analyze Istio and Kubernetes YAML as `istioctl analyze` does: "Error [IST0101]
    /// (VirtualService ns/name file:line) …" per problem, exit 79 if any is an error.
    Analyze(analyze_cmd::AnalyzeArgs),
    /// Explain what a sidecar (or gateway) would do with one request: listener, VirtualService
    /// rule, cluster, endpoints and policy, or why it is refused, blocked or passed through.
    Explain(Box<explain_cmd::ExplainArgs>),
    /// Print the ServiceEntries that would allow what running proxies blocked
    /// (sluice_egress_blocked_total on their /stats/prometheus).
    Suggest(suggest_cmd::SuggestArgs),
    /// A self-contained tour (no root, no network): an httpbin-like upstream, a sidecar in
    /// explicit-proxy mode, and curl commands that show allow, block and timeout.
    Demo(demo::DemoArgs),
    /// A mesh CA on disk: create a root (`ca init`), issue workload identities with SPIFFE IDs
    /// (`ca issue`), describe certificates (`ca show`).
    Ca(ca::CaArgs),
    /// A web page that draws the mesh as a service graph (Kiali's versioned-app graph) from a
    /// Prometheus server scraping the proxies, with the hosts REGISTRY_ONLY blocked.
    Dashboard(dashboard::DashboardArgs),
    /// What a running proxy is doing, from its admin API, as `istioctl proxy-config` prints it:
    /// `cluster`, `listener`, `route` or `endpoint` (`--admin 127.0.0.1:15000`, `-o json`).
    #[command(name = "proxy-config", visible_alias = "pc")]
    ProxyConfig(sluice::proxy_config::ProxyConfigArgs),
    /// The control plane: serve the config in --config to many proxies (`sluice sidecar|gateway
    /// --xds HOST:15010`) over gRPC, as istiod does (Envoy ADS carrying Istio config as
    /// MCP-over-XDS); istiod's metrics and /debug/syncz on the monitoring port (15014).
    Control(ControlArgs),
    /// Each proxy connected to the control plane and whether it has applied what it was sent
    /// (SYNCED / STALE / NOT SENT), as `istioctl proxy-status`; with a node id, per collection.
    #[command(name = "proxy-status", visible_alias = "ps")]
    ProxyStatus(sluice::proxy_status::ProxyStatusArgs),
    /// Add the sidecar to the workloads of a manifest, as `istioctl kube-inject`: an istio-init
    /// container (`sluice init`) and an istio-proxy container (`sluice sidecar --xds`), with
    /// Istio's annotations honoured; other documents pass through unchanged.
    Inject(sluice::inject_cmd::InjectArgs),
    /// Wait until the proxy next to this process is ready (/healthz/ready on 15021); the hook
    /// that holds an injected application until its proxy is up (holdApplicationUntilProxyStarts).
    Wait(sluice::inject_cmd::WaitArgs),
    /// The release and the commit this binary was built from (as --version); `-o json`.
    Version(sluice::version_cmd::VersionArgs),
    /// Print the shell completion script for bash, zsh or fish (also elvish, powershell).
    Completion(sluice::cli_docs::CompletionArgs),
    /// Print the manual pages (roff) of every command, or write one file per command with
    /// --dir.
    Man(sluice::cli_docs::ManArgs),
}

#[derive(clap::Args, Debug)]
struct ControlArgs {
    /// Istio/Kubernetes YAML to serve: a directory (every *.yaml, *.yml, *.json below it) or
    /// one file, watched; the same validation and last-good rules as a proxy's --config.
    #[arg(long, value_name = "FILE|DIR", required_unless_present = "kube")]
    config: Option<PathBuf>,
    /// Also serve what the Kubernetes API holds (Istio's resources, Services, EndpointSlices,
    /// ready Pods, the `istio` ConfigMap of --namespace, the Secrets Gateways name), watched.
    /// The cluster comes from KUBECONFIG or ~/.kube/config, else the pod's service account.
    #[arg(long)]
    kube: bool,
    /// With --kube: the namespaces whose Secrets Gateways and DestinationRules may name in
    /// `credentialName` (Secrets are read only there; the RBAC in deploy/ grants exactly that)
    /// [default: --namespace].
    #[arg(long, value_delimiter = ',', value_name = "NS,...")]
    credential_namespaces: Vec<String>,
    /// Plaintext xDS port (istiod's 15010).
    #[arg(long, default_value_t = 15010)]
    xds_port: u16,
    /// Monitoring port: /metrics (istiod's pilot_* metrics), /ready, /debug/syncz (istiod's 15014).
    #[arg(long, default_value_t = 15014)]
    monitoring_port: u16,
    /// Address both ports listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// This replica's name, shown by proxy-status [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// Push once the config has been quiet this long (istiod's PILOT_DEBOUNCE_AFTER).
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    debounce_after: std::time::Duration,
    /// Push at the latest this long after the first change (istiod's PILOT_DEBOUNCE_MAX).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    debounce_max: std::time::Duration,
    /// Mutual-TLS xDS port (istiod's 15012), served with --mesh-ca: proxies present their mesh
    /// identity, which fixes their namespace; gateways get their namespace's Secrets only here.
    #[arg(long, default_value_t = 15012)]
    xds_tls_port: u16,
    /// Namespace of the control plane's own identity (its certificate's SPIFFE ID).
    #[arg(long, default_value = "istio-system")]
    namespace: String,
    /// Service account of the control plane's own identity.
    #[arg(long, default_value = "istiod")]
    service_account: String,
    #[command(flatten)]
    mesh: MeshIdentityArgs,
    #[command(flatten)]
    webhook: sluice::inject_cmd::WebhookArgs,
}

impl ControlArgs {
    fn options(self) -> sluice_control::ControlOptions {
        let name = self.name.unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "sluice-control".to_string())
        });
        let tls = self
            .mesh
            .options(&self.namespace, Some(&self.service_account))
            .map(|identity| sluice_control::ControlTls {
                addr: std::net::SocketAddr::new(self.bind, self.xds_tls_port),
                identity,
            });
        let webhook = self.webhook.options(
            self.bind,
            &self.namespace,
            self.mesh.mesh_ca.as_deref(),
            sluice_control::serves_certificates(self.kube, self.mesh.mesh_ca.as_deref()),
        );
        sluice_control::ControlOptions {
            webhook,
            tls,
            config_dir: self.config,
            kube: self.kube,
            istio_namespace: self.namespace.clone(),
            credential_namespaces: if self.credential_namespaces.is_empty() {
                vec![self.namespace.clone()]
            } else {
                self.credential_namespaces.clone()
            },
            xds_addr: std::net::SocketAddr::new(self.bind, self.xds_port),
            monitoring_addr: std::net::SocketAddr::new(self.bind, self.monitoring_port),
            identifier: name,
            debounce: sluice_control::push::Debounce {
                after: self.debounce_after,
                max: self.debounce_max,
            },
        }
    }
}

#[derive(clap::Args, Debug)]
struct SidecarArgs {
    #[command(flatten)]
    source: ConfigSourceArgs,
    /// Namespace of this workload (for exportTo and telemetry).
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Labels of this workload, k=v,k=v (for sourceLabels, workloadSelector and telemetry).
    #[arg(long, value_delimiter = ',', value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// This workload's locality, region[/zone[/subzone]], for locality load balancing (sets the
    /// topology.kubernetes.io/region|zone and topology.istio.io/subzone labels; default: from
    /// --labels, else none).
    #[arg(long)]
    locality: Option<String>,
    /// Service account of this workload.
    #[arg(long)]
    service_account: Option<String>,
    /// Port that iptables redirects outbound traffic to.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Port that iptables redirects inbound traffic to (`sluice init -b '*'` or `-b PORTS`);
    /// connections are forwarded to the application at their original destination, from
    /// 127.0.0.6. 0 disables the inbound listener.
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Port of the explicit forward proxy (absolute-URI HTTP and CONNECT).
    #[arg(long, default_value_t = 15080)]
    proxy_port: u16,
    /// Address the explicit proxy binds to.
    #[arg(long, default_value = "127.0.0.1")]
    proxy_bind: IpAddr,
    /// Admin API port (127.0.0.1 only): /config_dump, /clusters, /ready, /stats.
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// Health port: /healthz/ready.
    #[arg(long, default_value_t = 15021)]
    status_port: u16,
    /// Prometheus port: /stats/prometheus.
    #[arg(long, default_value_t = 15090)]
    stats_port: u16,
    /// Data-plane worker threads (Istio's proxy `concurrency`: 2 for sidecars; 0 = one per CPU).
    #[arg(
        long,
        default_value_t = 2,
        value_name = "N",
        env = "SLUICE_CONCURRENCY"
    )]
    concurrency: usize,
    #[command(flatten)]
    mesh: MeshIdentityArgs,
    #[command(flatten)]
    downstream: DownstreamArgs,
}

/// Client-connection limits and graceful drain, shared by `sidecar` and `gateway`.
#[derive(clap::Args, Debug)]
struct DownstreamArgs {
    /// Longest a client may take to send a request's headers (also ends HTTP/1.1 keep-alive
    /// connections idle that long); a slower client is disconnected.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    request_headers_timeout: sluice_api::duration::Duration,
    /// On SIGTERM, how long in-flight requests may finish (readiness 503, no new connections,
    /// `connection: close` / GOAWAY) before the process exits; Istio's terminationDrainDuration.
    #[arg(
        long,
        default_value = "5s",
        value_name = "DURATION",
        env = "TERMINATION_DRAIN_DURATION"
    )]
    termination_drain_duration: sluice_api::duration::Duration,
}

impl DownstreamArgs {
    fn settings(&self) -> sluice_proxy::downstream::DownstreamSettings {
        sluice_proxy::downstream::DownstreamSettings {
            request_headers_timeout: self.request_headers_timeout.0,
            drain_duration: self.termination_drain_duration.0,
        }
    }
}

/// The proxy's mesh identity (Istio's workload certificate), shared by `sidecar` and `gateway`.
#[derive(clap::Args, Debug)]
struct MeshIdentityArgs {
    /// Directory of the mesh root: root-cert.pem, and root-key.pem to issue (and rotate) this
    /// proxy's own workload certificate. Enables ISTIO_MUTUAL and PeerAuthentication mTLS;
    /// without it the proxy has no mesh identity.
    #[arg(long, value_name = "DIR")]
    mesh_ca: Option<PathBuf>,
    /// Directory with cert-chain.pem and key.pem issued elsewhere (`sluice ca issue`), used when
    /// --mesh-ca has no root-key.pem; re-read when they change.
    #[arg(long, value_name = "DIR", requires = "mesh_ca")]
    identity_dir: Option<PathBuf>,
    /// Trust domain of the SPIFFE identity (spiffe://TD/ns/NS/sa/SA).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Lifetime of self-issued workload certificates, and the one asked of --ca-address
    /// (renewed at half of it), e.g. 24h, 90m.
    #[arg(long, default_value = "24h")]
    cert_ttl: sluice_api::duration::Duration,
    /// Have the workload certificate signed by this certificate service (istiod's or sluice
    /// control's 15012, as istio-agent's CA_ADDR), authenticated by --ca-token; used when
    /// --mesh-ca has no root-key.pem and no --identity-dir is given. Renewed at half its life.
    #[arg(long, value_name = "HOST:PORT", requires_all = ["mesh_ca", "ca_token"])]
    ca_address: Option<String>,
    /// The Kubernetes service-account token (audience istio-ca) that authenticates certificate
    /// requests, read anew for each (Istio mounts it at /var/run/secrets/tokens/istio-token).
    #[arg(long, value_name = "FILE", requires = "ca_address")]
    ca_token: Option<PathBuf>,
    /// The SPIFFE ID the certificate service's own certificate must carry [default:
    /// spiffe://TD/ns/istio-system/sa/istiod].
    #[arg(long, value_name = "SPIFFE_ID", requires = "ca_address")]
    ca_identity: Option<String>,
}

impl MeshIdentityArgs {
    /// The identity options, or `None` without --mesh-ca.
    fn options(&self, namespace: &str, service_account: Option<&str>) -> Option<IdentityOptions> {
        let mesh_ca = self.mesh_ca.clone()?;
        Some(IdentityOptions {
            mesh_ca,
            identity_dir: self.identity_dir.clone(),
            trust_domain: self.trust_domain.clone(),
            namespace: namespace.to_string(),
            service_account: service_account.unwrap_or("default").to_string(),
            cert_ttl: self.cert_ttl.0,
            ca: self.ca_address.clone().map(|address| CaOptions {
                address,
                token_file: self.ca_token.clone().unwrap_or_default(),
                server_identity: self.ca_identity.clone().unwrap_or_else(|| {
                    format!("spiffe://{}/ns/istio-system/sa/istiod", self.trust_domain)
                }),
            }),
        })
    }
}

#[derive(clap::Args, Debug)]
struct GatewayArgs {
    #[command(flatten)]
    source: ConfigSourceArgs,
    /// Namespace of the gateway workload (TLS `credentialName` Secrets are read from it).
    #[arg(long, default_value = "istio-system")]
    namespace: String,
    /// Labels of the gateway workload, k=v,k=v: Gateways whose selector is a subset are served.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = parse_label,
        default_value = "istio=ingressgateway"
    )]
    labels: Vec<(String, String)>,
    /// This gateway's locality, region[/zone[/subzone]], for locality load balancing (sets the
    /// topology.kubernetes.io/region|zone and topology.istio.io/subzone labels).
    #[arg(long)]
    locality: Option<String>,
    /// Admin API port (127.0.0.1 only): /config_dump, /clusters, /listeners, /ready, /stats.
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// Health port: /healthz/ready (ready once config is loaded and every gateway port is bound).
    #[arg(long, default_value_t = 15021)]
    status_port: u16,
    /// Prometheus port: /stats/prometheus.
    #[arg(long, default_value_t = 15090)]
    stats_port: u16,
    /// Address the gateway ports listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Service account of the gateway workload (its mesh identity with --mesh-ca; default
    /// `default`).
    #[arg(long)]
    service_account: Option<String>,
    /// Data-plane worker threads (Istio's proxy `concurrency`; 0, the gateway default, = one per
    /// CPU).
    #[arg(
        long,
        default_value_t = 0,
        value_name = "N",
        env = "SLUICE_CONCURRENCY"
    )]
    concurrency: usize,
    #[command(flatten)]
    mesh: MeshIdentityArgs,
    #[command(flatten)]
    downstream: DownstreamArgs,
}

/// Where a proxy's config comes from: a folder, or a control plane.
#[derive(clap::Args, Debug)]
struct ConfigSourceArgs {
    /// Istio/Kubernetes YAML: a directory (every *.yaml, *.yml, *.json below it) or one file;
    /// watched, changes apply within a second.
    #[arg(
        long,
        value_name = "FILE|DIR",
        required_unless_present = "xds",
        conflicts_with = "xds"
    )]
    config: Option<PathBuf>,
    /// Take the config from a control plane instead: `sluice control` or istiod, HOST:PORT of
    /// its plaintext xDS port (15010). Several replicas, comma-separated: any one will do.
    /// Not ready until the first complete config; a refused config is NACKed and the last good
    /// one keeps serving.
    #[arg(long, value_name = "HOST:PORT")]
    xds: Option<String>,
    /// The node id to present to the control plane [default: Istio's
    /// sidecar~IP~HOSTNAME.NS~NS.svc.cluster.local, router~… for a gateway].
    #[arg(long, requires = "xds")]
    xds_node_id: Option<String>,
    /// Mutual TLS to the control plane, presenting this proxy's mesh identity (--mesh-ca); on by
    /// itself for a server on istiod's port 15012. Secrets (gateway credentials) are only served
    /// this way, and only the proxy's own namespace's.
    #[arg(long, requires = "xds")]
    xds_tls: bool,
    /// The SPIFFE ID the control plane's certificate must carry over mutual TLS [default:
    /// spiffe://TD/ns/istio-system/sa/istiod, TD being this proxy's trust domain].
    #[arg(long, value_name = "SPIFFE_ID", requires = "xds")]
    xds_identity: Option<String>,
    /// Delta xDS: only the resources that changed travel, and a reconnect resends only what
    /// changed meanwhile (state of the world otherwise, as istiod's default).
    #[arg(long, requires = "xds")]
    xds_delta: bool,
}

impl ConfigSourceArgs {
    fn source(self) -> ConfigSource {
        match (self.config, self.xds) {
            (Some(dir), _) => ConfigSource::Dir(dir),
            (None, servers) => ConfigSource::Xds {
                servers: servers.unwrap_or_default(),
                node_id: self.xds_node_id,
                tls: self.xds_tls,
                control_plane_identity: self.xds_identity,
                delta: self.xds_delta,
            },
        }
    }
}

/// `labels` plus the topology labels of `locality` (`region/zone/subzone`), which win.
fn with_locality(
    labels: Vec<(String, String)>,
    locality: Option<&str>,
) -> std::collections::BTreeMap<String, String> {
    let mut labels: std::collections::BTreeMap<String, String> = labels.into_iter().collect();
    if let Some(l) = locality.filter(|l| !l.is_empty()) {
        let l = sluice_model::policy::Locality::parse(l);
        labels.remove(sluice_model::policy::LOCALITY_LABEL);
        for (key, value) in [
            (sluice_model::policy::REGION_LABEL, l.region),
            (sluice_model::policy::ZONE_LABEL, l.zone),
            (sluice_model::policy::SUBZONE_LABEL, l.subzone),
        ] {
            if !value.is_empty() {
                labels.insert(key.to_string(), value);
            }
        }
    }
    labels
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label {s:?} is not k=v")),
    }
}

/// Installs the stderr logger behind a reload layer, and hands the reload handle to the proxy
/// runtime so the admin API's `POST /logging` can change levels live.
fn init_logging(level: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let (level, filter) = match tracing_subscriber::EnvFilter::try_new(level) {
        Ok(f) => (level.to_string(), f),
        Err(_) => (
            "info".to_string(),
            tracing_subscriber::EnvFilter::new("info"),
        ),
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour codes only for a person at a terminal, not in files and log collectors,
                // and not for anyone who set NO_COLOR.
                .with_ansi(sluice::color::enabled(sluice::color::Stream::Stderr))
                .with_target(false),
        )
        .init();
    sluice_proxy::runtime::install_log_control(std::sync::Arc::new(ReloadableLog {
        initial: level,
        handle,
    }));
}

/// `POST /logging` → the subscriber's filter.
struct ReloadableLog {
    initial: String,
    handle: tracing_subscriber::reload::Handle<
        tracing_subscriber::EnvFilter,
        tracing_subscriber::Registry,
    >,
}

impl sluice_proxy::runtime::LogControl for ReloadableLog {
    fn initial(&self) -> String {
        self.initial.clone()
    }

    fn apply(&self, directives: &str) -> Result<(), String> {
        let filter =
            tracing_subscriber::EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The runtime of a proxy with `concurrency` data-plane worker threads; 0 = one per CPU.
fn proxy_runtime(concurrency: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let workers = match concurrency {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // One worker (Istio's `concurrency: 1`) is the calling thread itself: tokio's current-thread
    // scheduler, without the work-stealing machinery (shared queues, wake-ups of idle workers,
    // poll-time statistics) that a single worker pays for and cannot use (bench/instructions.sh:
    // 2% fewer instructions per request).
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    Ok(builder.enable_all().build()?)
}

// jemalloc instead of glibc malloc: after thousands of connections close, glibc keeps the freed
// memory resident (fragmented heaps, per-thread arenas; only the top of a heap is ever returned),
// so a proxy stayed at its peak RSS for good. jemalloc's background threads purge unused pages
// as they age (dirty_decay_ms, 10 s by default), even when the proxy goes idle after the flood.
// Measured in bench/memory.sh (bench/README.md); mimalloc kept the memory, and glibc with
// malloc_trim needs a trigger on the data path.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's startup options (tikv-jemallocator builds it with the `_rjem_` symbol prefix).
/// Without background threads, unused pages are only purged on later allocator calls, so an
/// idle proxy would keep them.
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8] = b"background_thread:true\0";

/// Runs first on the config thread (see `sluice_proxy::store::AllocatorHooks`): the
/// thread works without jemalloc's cache of freed objects. With the cache, each allocation reuses
/// the slot a temporary of the parse just freed, so the resources a load keeps are scattered
/// over pages that stay resident for them; without it jemalloc packs them from the lowest free
/// address. The thread is off the data path and mostly asleep, so the cache bought little anyway.
fn config_thread_without_cache() {
    jemalloc_control(b"thread.tcache.enabled\0", Some(false));
}

/// Gives back what a config compile freed (see `sluice_proxy::store::AllocatorHooks`); runs on
/// the config thread: every arena returns its unused dirty pages now instead of over the next
/// `dirty_decay_ms`.
fn release_freed_memory() {
    // jemalloc's `MALLCTL_ARENAS_ALL`: the command applies to every arena.
    jemalloc_control(b"arena.4096.purge\0", None);
}

/// Runs the jemalloc control `name` (NUL-terminated), setting it to `value` when given.
fn jemalloc_control(name: &[u8], value: Option<bool>) {
    let mut new = value.unwrap_or(false);
    let (new_ptr, new_len) = match value {
        Some(_) => (
            std::ptr::from_mut(&mut new).cast::<std::ffi::c_void>(),
            std::mem::size_of::<bool>(),
        ),
        None => (std::ptr::null_mut(), 0),
    };
    // SAFETY: `name` is NUL-terminated; the new value, when there is one, is a live bool of the
    // size passed (both controls used here take a bool or nothing), and nothing is read back.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            new_ptr,
            new_len,
        )
    };
    if rc != 0 {
        let name = String::from_utf8_lossy(&name[..name.len().saturating_sub(1)]);
        tracing::debug!(control = %name, rc, "jemalloc control failed");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sluice_proxy::store::set_allocator_hooks(sluice_proxy::store::AllocatorHooks {
        thread_start: config_thread_without_cache,
        after_publish: release_freed_memory,
    });
    // One-shot commands print their answer on stdout; the config store's progress lines would
    // only be noise there.
    let long_running = matches!(
        cli.command,
        Command::Sidecar(_)
            | Command::Gateway(_)
            | Command::Demo(_)
            | Command::Dashboard(_)
            | Command::Control(_)
    );
    let default_level = if long_running { "info" } else { "warn" };
    init_logging(cli.log_level.as_deref().unwrap_or(default_level));
    let result = match cli.command {
        Command::Validate(args) => return ExitCode::from(validate_cmd::run(&args) as u8),
        Command::Analyze(args) => return ExitCode::from(analyze_cmd::run(&args) as u8),
        Command::Explain(args) => return ExitCode::from(explain_cmd::run(&args) as u8),
        Command::Suggest(args) => return ExitCode::from(suggest_cmd::run(&args) as u8),
        Command::Init(args) => init::run(&args),
        Command::Ca(args) => ca::run(&args),
        Command::Dashboard(args) => runtime().and_then(|rt| rt.block_on(dashboard::run(args))),
        Command::ProxyConfig(args) => sluice::proxy_config::run(&args),
        Command::ProxyStatus(args) => sluice::proxy_status::run(&args),
        Command::Inject(args) => return ExitCode::from(sluice::inject_cmd::run(&args) as u8),
        Command::Wait(args) => sluice::inject_cmd::wait(&args),
        Command::Version(args) => sluice::version_cmd::run(&args),
        Command::Completion(args) => sluice::cli_docs::run_completion(Cli::command(), &args),
        Command::Man(args) => sluice::cli_docs::man(Cli::command(), &args),
        Command::Control(args) => {
            runtime().and_then(|rt| rt.block_on(sluice_control::run(args.options())))
        }
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(demo::run(args))),
        Command::Sidecar(args) => {
            let identity = args
                .mesh
                .options(&args.namespace, args.service_account.as_deref());
            let opts = SidecarOptions {
                config: args.source.source(),
                namespace: args.namespace,
                labels: with_locality(args.labels, args.locality.as_deref()),
                service_account: args.service_account,
                outbound_port: args.outbound_port,
                inbound_port: (args.inbound_port != 0).then_some(args.inbound_port),
                proxy_port: args.proxy_port,
                proxy_bind: args.proxy_bind,
                admin_port: args.admin_port,
                status_port: args.status_port,
                stats_port: args.stats_port,
                downstream: args.downstream.settings(),
            };
            proxy_runtime(args.concurrency)
                .and_then(|rt| rt.block_on(sidecar::run_with_identity(opts, identity)))
        }
        Command::Gateway(args) => {
            let identity = args
                .mesh
                .options(&args.namespace, args.service_account.as_deref());
            let opts = GatewayOptions {
                config: args.source.source(),
                namespace: args.namespace,
                labels: with_locality(args.labels, args.locality.as_deref()),
                admin_port: args.admin_port,
                status_port: args.status_port,
                stats_port: args.stats_port,
                bind: args.bind,
                downstream: args.downstream.settings(),
            };
            proxy_runtime(args.concurrency)
                .and_then(|rt| rt.block_on(gateway::run_with_identity(opts, identity)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}
