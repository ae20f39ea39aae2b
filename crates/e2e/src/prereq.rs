//! Prerequisites: root, the external programs, the Python venv and the sluice binary.
//!
//! A missing prerequisite is a test failure whose message names what is missing and how to install it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Absolute paths of the programs the harness runs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub ip: PathBuf,
    pub iptables_save: PathBuf,
    pub dnsmasq: PathBuf,
    pub curl: PathBuf,
    pub openssl: PathBuf,
    pub setpriv: PathBuf,
    pub sed: PathBuf,
    pub gunicorn: PathBuf,
    pub venv: PathBuf,
}

const INSTALL_ALL: &str = "scripts/install-test-deps.sh";

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// Looks a program up in `PATH` and in the sbin directories (root's tools live there).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The venv that holds httpbin and gunicorn: `$SLUICE_TEST_VENV` or `<repo>/.venv`.
pub fn venv_dir() -> PathBuf {
    match std::env::var_os("SLUICE_TEST_VENV") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => repo_root().join(".venv"),
    }
}

/// Checks every prerequisite once per process; panics listing all that are missing.
pub fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    match TOOLS.get_or_init(check) {
        Ok(t) => t,
        Err(msg) => panic!("{msg}"),
    }
}

fn check() -> Result<Tools, String> {
    let mut missing: Vec<String> = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        missing.push(
            "root: the end-to-end tests create network namespaces and iptables rules; run them as root \
             (e.g. `sudo -E scripts/test.sh`)"
                .into(),
        );
    }
    let mut find = |name: &str, package: &str| -> PathBuf {
        which(name).unwrap_or_else(|| {
            missing.push(format!(
                "`{name}` (Debian package {package}): install with `apt-get install -y --no-install-recommends {package}` \
                 or run {INSTALL_ALL}"
            ));
            PathBuf::from(name)
        })
    };
    let ip = find("ip", "iproute2");
    find("iptables", "iptables");
    let iptables_save = find("iptables-save", "iptables");
    let dnsmasq = find("dnsmasq", "dnsmasq-base");
    let curl = find("curl", "curl");
    let openssl = find("openssl", "openssl");
    let setpriv = find("setpriv", "util-linux");
    let sed = find("sed", "sed");

    let venv = venv_dir();
    let gunicorn = venv.join("bin/gunicorn");
    let python = venv.join("bin/python");
    if !is_executable(&gunicorn) || !is_executable(&python) {
        missing.push(format!(
            "Python venv with httpbin and gunicorn at {} (set SLUICE_TEST_VENV to use another): \
             create it with {INSTALL_ALL} (pip install -r scripts/requirements-test.txt)",
            venv.display()
        ));
    } else {
        let ok = Command::new(&python)
            .args(["-c", "import httpbin, gunicorn"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            missing.push(format!(
                "the venv at {} cannot import httpbin and gunicorn: run {INSTALL_ALL} \
                 (or `{}/bin/pip install -r scripts/requirements-test.txt`)",
                venv.display(),
                venv.display()
            ));
        }
    }
    if missing.is_empty() {
        Ok(Tools {
            ip,
            iptables_save,
            dnsmasq,
            curl,
            openssl,
            setpriv,
            sed,
            gunicorn,
            venv,
        })
    } else {
        Err(format!(
            "end-to-end test prerequisites are missing:\n  - {}\n(`scripts/test.sh` installs all of them)",
            missing.join("\n  - ")
        ))
    }
}

/// The sluice binary under test: `$SLUICE_BIN`, or `sluice` in the target directory that holds this
/// test binary (`target/debug/deps/<test>` → `target/debug/sluice`).
pub fn sluice_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(find_sluice) {
        Ok(p) => p.clone(),
        Err(msg) => panic!("{msg}"),
    }
}

fn find_sluice() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("SLUICE_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(format!(
                "SLUICE_BIN={} is not an executable file",
                p.display()
            ))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate the test binary: {e}"))?;
    let mut candidates = Vec::new();
    for dir in exe.ancestors().skip(1).take(3) {
        candidates.push(dir.join("sluice"));
    }
    let found = candidates.iter().find(|p| is_executable(p)).cloned().ok_or_else(|| {
        format!(
            "the sluice binary was not found (looked at {}): build it first with `cargo build -p sluice` \
             (scripts/test.sh does), or point SLUICE_BIN at it",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })?;
    Ok(runnable_by_proxy_user(&found))
}

/// The sidecar runs as uid 1337, which must be able to reach the binary. A checkout under a private
/// home directory (mode 0700) is not reachable, so the binary is then copied to a world-readable place.
fn runnable_by_proxy_user(bin: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let reachable = bin.ancestors().skip(1).all(|dir| {
        std::fs::metadata(dir)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    }) && std::fs::metadata(bin)
        .map(|m| m.permissions().mode() & 0o005 == 0o005)
        .unwrap_or(false);
    if reachable {
        return bin.to_path_buf();
    }
    let meta = std::fs::metadata(bin).ok();
    let size = meta.as_ref().map(|m| m.len()).unwrap_or(0);
    let stamp = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let stamp = format!("{stamp}-{size}");
    // One copy per build, shared by all test processes; written under a unique name, then renamed.
    let dir = PathBuf::from("/tmp/sluice-e2e-bin");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
    let target = dir.join(format!("sluice-{stamp}"));
    if !target.exists() {
        let tmp = dir.join(format!(".sluice-{stamp}.{}.tmp", std::process::id()));
        if std::fs::copy(bin, &tmp).is_ok() {
            let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755));
            let _ = std::fs::rename(&tmp, &target);
        }
    }
    if target.exists() {
        target
    } else {
        bin.to_path_buf()
    }
}
