//! `sluice ca`: a minimal mesh CA on disk. `init` creates the root, `issue` writes a workload
//! identity (what istiod and istio-agent hand a sidecar), `show` describes a certificate. The
//! certificates are made by [`sluice_proxy::identity`], the same code a proxy uses to issue its
//! own when it is given the root key.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use sluice_proxy::identity::{
    create_root, describe_certs, spiffe_id_for, write_root_files, write_workload_files,
    CertSummary, MeshCa, CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE, ROOT_KEY_FILE,
};

/// Options of `sluice ca`.
#[derive(clap::Args, Debug)]
pub struct CaArgs {
    #[command(subcommand)]
    pub command: CaCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum CaCommand {
    /// Create a mesh root: DIR/root-cert.pem (a self-signed CA, EC P-256, CN "sluice mesh
    /// root", O the trust domain) and DIR/root-key.pem (mode 0600). Give DIR to proxies as their
    /// mesh CA; a proxy that can read root-key.pem issues and rotates its own certificate.
    Init(InitArgs),
    /// Issue a workload identity signed by the root in --dir: OUT/cert-chain.pem (SPIFFE ID
    /// spiffe://TRUST_DOMAIN/ns/NS/sa/SA as URI SAN), OUT/key.pem (mode 0600) and
    /// OUT/root-cert.pem. Files are replaced by renames, so a proxy watching OUT picks up the
    /// new pair without reading a half-written file.
    Issue(IssueArgs),
    /// Print the subject, SPIFFE ID and validity of each certificate in a PEM file.
    Show(ShowArgs),
}

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Directory to write root-cert.pem and root-key.pem into (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// Trust domain of the mesh (the root's O, and the host part of SPIFFE IDs).
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Lifetime of the root certificate, e.g. 8760h, 10y.
    #[arg(long, default_value = "8760h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// Replace an existing root. Certificates issued by the old one stop being trusted.
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args, Debug)]
pub struct IssueArgs {
    /// The CA directory (root-cert.pem and root-key.pem, as `sluice ca init` writes them).
    #[arg(long)]
    pub dir: PathBuf,
    /// Namespace of the workload.
    #[arg(long)]
    pub namespace: String,
    /// Service account of the workload.
    #[arg(long)]
    pub service_account: String,
    /// Directory to write cert-chain.pem, key.pem and root-cert.pem into (created if missing;
    /// existing files are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Lifetime of the certificate, e.g. 24h, 90m.
    #[arg(long, default_value = "24h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// Trust domain of the SPIFFE ID [default: the root's O, else cluster.local].
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// Give the written files to this user (UID or UID:GID), e.g. 1337 for a sidecar that
    /// reads them with --identity-dir; key.pem stays readable by its owner only.
    #[arg(long, value_parser = parse_owner)]
    pub owner: Option<(u32, Option<u32>)>,
}

fn parse_owner(s: &str) -> Result<(u32, Option<u32>), String> {
    let bad = || format!("{s:?} is not UID or UID:GID (numbers)");
    match s.split_once(':') {
        Some((u, g)) => Ok((
            u.parse().map_err(|_| bad())?,
            Some(g.parse().map_err(|_| bad())?),
        )),
        None => Ok((s.parse().map_err(|_| bad())?, None)),
    }
}

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// A PEM file: root-cert.pem, cert-chain.pem or any certificate bundle.
    pub file: PathBuf,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration: {e}"))?;
    if ttl < Duration::from_secs(1) {
        return Err(format!("{s:?} is too short (at least 1s)"));
    }
    Ok(ttl)
}

/// Runs a `sluice ca` subcommand; what it wrote or found goes to stdout.
pub fn run(args: &CaArgs) -> anyhow::Result<()> {
    match &args.command {
        CaCommand::Init(a) => init(a),
        CaCommand::Issue(a) => issue(a),
        CaCommand::Show(a) => show(a),
    }
}

fn init(args: &InitArgs) -> anyhow::Result<()> {
    if args.trust_domain.is_empty() || args.trust_domain.contains('/') {
        anyhow::bail!(
            "trust domain {:?} is not a name such as cluster.local",
            args.trust_domain
        );
    }
    let (cert, key) = create_root(&args.trust_domain, args.ttl)?;
    write_root_files(&args.dir, &cert, &key, args.force)?;
    println!(
        "mesh root for trust domain {} written to {} and {} (valid until {})",
        args.trust_domain,
        args.dir.join(ROOT_CERT_FILE).display(),
        args.dir.join(ROOT_KEY_FILE).display(),
        humantime::format_rfc3339_seconds(SystemTime::now() + args.ttl)
    );
    Ok(())
}

fn issue(args: &IssueArgs) -> anyhow::Result<()> {
    let ca = MeshCa::load(&args.dir)?;
    let trust_domain = match &args.trust_domain {
        Some(td) => td.clone(),
        None => describe_certs(ca.root_pem().as_bytes())
            .ok()
            .and_then(|certs| certs.into_iter().find_map(|c| c.organization))
            .unwrap_or_else(|| "cluster.local".to_string()),
    };
    for (what, value) in [
        ("namespace", &args.namespace),
        ("service account", &args.service_account),
    ] {
        if value.is_empty() || value.contains('/') {
            anyhow::bail!("{what} {value:?} is not a Kubernetes name");
        }
    }
    let spiffe_id = spiffe_id_for(&trust_domain, &args.namespace, &args.service_account);
    let issued = ca.issue(&spiffe_id, args.ttl)?;
    write_workload_files(&args.out, &issued.cert_pem, &issued.key_pem, ca.root_pem())?;
    if let Some((uid, gid)) = args.owner {
        // The files were renamed into place first; a proxy that reads the key before it is
        // handed over keeps its current certificate and looks again a second later.
        for name in [ROOT_CERT_FILE, KEY_FILE, CERT_CHAIN_FILE] {
            let path = args.out.join(name);
            std::os::unix::fs::chown(&path, Some(uid), gid)
                .with_context(|| format!("cannot give {} to {uid}", path.display()))?;
        }
    }
    println!(
        "{spiffe_id} written to {}, {} and {} (valid until {})",
        args.out.join(CERT_CHAIN_FILE).display(),
        args.out.join(KEY_FILE).display(),
        args.out.join(ROOT_CERT_FILE).display(),
        humantime::format_rfc3339_seconds(issued.not_after)
    );
    Ok(())
}

fn show(args: &ShowArgs) -> anyhow::Result<()> {
    let pem = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let certs =
        describe_certs(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let now = SystemTime::now();
    for (i, cert) in certs.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print!("{}", render(&args.file, i, certs.len(), cert, now));
    }
    Ok(())
}

fn render(file: &Path, index: usize, count: usize, cert: &CertSummary, now: SystemTime) -> String {
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut out = String::new();
    if count > 1 {
        out.push_str(&format!(
            "# {} certificate {}/{count}\n",
            file.display(),
            index + 1
        ));
    }
    out.push_str(&format!("subject:    {}\n", or_dash(&cert.subject)));
    out.push_str(&format!("issuer:     {}\n", or_dash(&cert.issuer)));
    out.push_str(&format!(
        "spiffe id:  {}\n",
        cert.spiffe_id.as_deref().unwrap_or("-")
    ));
    let others: Vec<&str> = cert
        .uri_sans
        .iter()
        .filter(|u| Some(*u) != cert.spiffe_id.as_ref())
        .chain(&cert.dns_sans)
        .map(String::as_str)
        .collect();
    if !others.is_empty() {
        out.push_str(&format!("other SANs: {}\n", others.join(", ")));
    }
    out.push_str(&format!(
        "not before: {}\n",
        humantime::format_rfc3339_seconds(cert.not_before)
    ));
    let remaining = match cert.not_after.duration_since(now) {
        Ok(left) => format!("expires in {}", rounded(left)),
        Err(e) => format!("EXPIRED {} ago", rounded(e.duration())),
    };
    out.push_str(&format!(
        "not after:  {} ({remaining})\n",
        humantime::format_rfc3339_seconds(cert.not_after)
    ));
    out.push_str(&format!(
        "ca:         {}\n",
        if cert.is_ca { "yes" } else { "no" }
    ));
    out.push_str(&format!("serial:     {}\n", cert.serial));
    out
}

/// Coarse enough to read at a glance: days beyond two days, else hours and minutes.
fn rounded(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}
