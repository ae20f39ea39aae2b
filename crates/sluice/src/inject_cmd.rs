//! `sluice inject -f FILE` (as `istioctl kube-inject`): the workloads of a manifest with the
//! sidecar injected, on stdout or in `-o FILE`; and `sluice wait`, the hook an injected pod
//! runs to hold its application until the proxy is ready (Istio's `pilot-agent wait`).

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sluice_api::Diagnostic;
use sluice_kube::inject::{self, InjectOptions};

/// Options of `sluice inject`.
#[derive(clap::Args, Debug, Clone)]
pub struct InjectArgs {
    /// The manifest: multi-document YAML (or JSON) of Kubernetes objects; `-` reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub filename: PathBuf,
    /// Write the result here instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Image of the injected containers (`sluice init` and `sluice sidecar` both run from it;
    /// a pod's `sidecar.istio.io/proxyImage` annotation overrides it).
    #[arg(long, default_value = inject::DEFAULT_IMAGE, value_name = "IMAGE")]
    pub image: String,
    /// The control plane the injected sidecars take their config from: `sluice control`'s
    /// plaintext xDS port (HOST:PORT).
    #[arg(long, default_value = inject::DEFAULT_XDS_ADDRESS, value_name = "HOST:PORT")]
    pub xds_address: String,
    /// The control plane's certificate service (its 15012, e.g.
    /// sluice-control.istio-system.svc:15012): the sidecars get a mesh identity there for their
    /// service-account token and their config from that port over mutual TLS, as Istio's do
    /// (a projected token and the istio-ca-root-cert ConfigMap are mounted).
    #[arg(long, value_name = "HOST:PORT")]
    pub ca_address: Option<String>,
    /// The mesh config whose `defaultConfig` (ProxyConfig) every pod starts from, under its
    /// `proxy.istio.io/config` annotation: a MeshConfig YAML or the `istio` ConfigMap.
    #[arg(long, value_name = "FILE", alias = "meshConfigFile")]
    pub mesh_config: Option<PathBuf>,
}

/// Runs `sluice inject`: 0 on success; 1 with the problem on stderr.
pub fn run(args: &InjectArgs) -> i32 {
    match inject_files(args) {
        Ok(warnings) => {
            for w in warnings {
                eprintln!("{w}");
            }
            0
        }
        Err(e) => {
            eprintln!("sluice inject: {e:#}");
            1
        }
    }
}

fn inject_files(args: &InjectArgs) -> anyhow::Result<Vec<Diagnostic>> {
    let mut opts = InjectOptions {
        image: args.image.clone(),
        xds_address: args.xds_address.clone(),
        ca_address: args.ca_address.clone(),
        ..InjectOptions::default()
    };
    let mut warnings = Vec::new();
    if let Some(path) = &args.mesh_config {
        let text = read_text(path)?;
        let (default_config, mesh_warnings) =
            inject::load_mesh_config(path, &text).map_err(|d| anyhow::anyhow!("{d}"))?;
        opts.default_proxy_config = default_config;
        warnings.extend(mesh_warnings);
    }
    let name = if args.filename == Path::new("-") {
        "<stdin>".to_string()
    } else {
        args.filename.display().to_string()
    };
    let text = read_text(&args.filename)?;
    let injected =
        inject::inject_manifest(&name, &text, &opts).map_err(|d| anyhow::anyhow!("{d}"))?;
    warnings.extend(injected.warnings);
    match &args.output {
        Some(out) => std::fs::write(out, &injected.text)
            .with_context(|| format!("cannot write {}", out.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(injected.text.as_bytes())
                .and_then(|()| stdout.flush())
                .context("cannot write to stdout")?;
        }
    }
    Ok(warnings)
}

/// The text of `path` (`-`: stdin), at most [`inject::yaml::MAX_TEXT_BYTES`].
fn read_text(path: &Path) -> anyhow::Result<String> {
    let limit = inject::yaml::MAX_TEXT_BYTES as u64 + 1;
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(limit)
            .read_to_end(&mut bytes)
            .context("cannot read stdin")?;
    } else {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        anyhow::ensure!(meta.is_file(), "{}: not a regular file", path.display());
        std::fs::File::open(path)
            .and_then(|f| f.take(limit).read_to_end(&mut bytes))
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    anyhow::ensure!(
        bytes.len() as u64 <= inject::yaml::MAX_TEXT_BYTES as u64,
        "{}: larger than {} MiB",
        path.display(),
        inject::yaml::MAX_TEXT_BYTES / (1024 * 1024)
    );
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))
}

/// Options of `sluice wait`.
#[derive(clap::Args, Debug, Clone)]
pub struct WaitArgs {
    /// The proxy's health port (`/healthz/ready` on 127.0.0.1).
    #[arg(long, default_value_t = inject::STATUS_PORT)]
    pub status_port: u16,
    /// Give up (exit 1) after this long, e.g. 60s, 2m.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Time between two checks.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub period: Duration,
}

/// Runs `sluice wait`: returns once the proxy answers 200 on `/healthz/ready`.
pub fn wait(args: &WaitArgs) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], args.status_port));
    let request = format!(
        "GET /healthz/ready HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        args.status_port
    );
    let deadline = Instant::now() + args.timeout;
    loop {
        let last = match crate::http_get::exchange(&addr, &request) {
            Ok(raw) => match crate::http_get::parse_response(&raw) {
                Ok((200, _)) => {
                    eprintln!("sluice wait: the proxy is ready");
                    return Ok(());
                }
                Ok((status, body)) => format!("{status} {}", body.trim()),
                Err(e) => e.to_string(),
            },
            Err((_, e)) => e.to_string(),
        };
        if Instant::now() + args.period > deadline {
            anyhow::bail!(
                "the proxy was not ready on {addr} within {} (last answer: {last})",
                humantime::format_duration(args.timeout)
            );
        }
        std::thread::sleep(args.period);
    }
}

/// The admission webhook flags of `sluice control`.
#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// HTTPS port of the admission webhooks (istiod's 15017): `POST /inject` (sidecar injection
    /// into Pods, for namespaces labelled istio-injection=enabled) and `POST /validate` (refuses
    /// what `sluice validate` refuses). Served when there is a certificate: --webhook-cert and
    /// --webhook-key, or a --mesh-ca with root-key.pem; 0 turns them off.
    #[arg(long, default_value_t = 15017)]
    pub webhook_port: u16,
    /// The webhooks' certificate chain (PEM), re-read when it changes [default: issued from the
    /// --mesh-ca root for the --webhook-service names].
    #[arg(long, value_name = "FILE", requires = "webhook_key")]
    pub webhook_cert: Option<PathBuf>,
    /// The private key of --webhook-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "webhook_cert")]
    pub webhook_key: Option<PathBuf>,
    /// The Service in front of the control plane: a certificate issued from --mesh-ca is for
    /// NAME.NAMESPACE.svc (what the API server calls), NAME.NAMESPACE.svc.cluster.local,
    /// NAME.NAMESPACE and NAME.
    #[arg(long, default_value = inject::CONTROL_SERVICE, value_name = "NAME")]
    pub webhook_service: String,
    /// Image of the containers the injection webhook adds.
    #[arg(long, default_value = inject::DEFAULT_IMAGE, value_name = "IMAGE")]
    pub inject_image: String,
    /// The control plane address injected sidecars connect to [default:
    /// --webhook-service.--namespace.svc:15010].
    #[arg(long, value_name = "HOST:PORT")]
    pub inject_xds_address: Option<String>,
}

impl WebhookArgs {
    /// The webhooks' options, or `None` (logged) when they are off or have no certificate.
    /// `serves_certificates`: the control plane serves the certificate service (`--kube` with
    /// the mesh root's key), so injected sidecars get their identity from it.
    pub fn options(
        &self,
        bind: std::net::IpAddr,
        namespace: &str,
        mesh_ca: Option<&Path>,
        serves_certificates: bool,
    ) -> Option<sluice_control::webhook_server::WebhookOptions> {
        use sluice_control::webhook_server::{service_dns_names, WebhookCertificate};
        if self.webhook_port == 0 {
            return None;
        }
        let certificate = match (&self.webhook_cert, &self.webhook_key, mesh_ca) {
            (Some(cert), Some(key), _) => WebhookCertificate::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            (_, _, Some(dir)) if dir.join(sluice_proxy::identity::ROOT_KEY_FILE).exists() => {
                WebhookCertificate::MeshCa {
                    dir: dir.to_path_buf(),
                    dns_names: service_dns_names(&self.webhook_service, namespace),
                }
            }
            _ => {
                tracing::info!(
                    "admission webhooks not served: no certificate (give --webhook-cert and \
                     --webhook-key, or a --mesh-ca with root-key.pem)"
                );
                return None;
            }
        };
        let xds_address = self.inject_xds_address.clone().unwrap_or_else(|| {
            if self.webhook_service == inject::CONTROL_SERVICE {
                inject::xds_address_for(namespace)
            } else {
                format!("{}.{namespace}.svc:15010", self.webhook_service)
            }
        });
        Some(sluice_control::webhook_server::WebhookOptions {
            addr: std::net::SocketAddr::new(bind, self.webhook_port),
            certificate,
            inject: InjectOptions {
                image: self.inject_image.clone(),
                xds_address,
                ca_address: serves_certificates
                    .then(|| format!("{}.{namespace}.svc:15012", self.webhook_service)),
                ..InjectOptions::default()
            },
        })
    }
}
