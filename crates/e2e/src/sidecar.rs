//! The sidecar under test, driven through the documented command line (DESIGN.md, "Command-line
//! contract"):
//!
//! ```text
//! sluice init -p 15001 -u 1337 -m REDIRECT -i '*' -x '' -b ''            # in the pod netns, as root
//! sluice sidecar --config DIR --namespace default --labels app=sleep \
//!     --admin-port 15000 --status-port 15021 --stats-port 15090 [--proxy-port 15080]
//!                                                                         # in the pod netns, as uid 1337
//! ```
//! Ready when `GET http://127.0.0.1:15021/healthz/ready` answers 200.

use std::time::Duration;

use crate::accesslog::{parse_json_lines, AccessLogEntry};
use crate::process::Proc;

pub const PROXY_UID: u32 = 1337;
pub const OUTBOUND_PORT: u16 = 15001;
pub const ADMIN_PORT: u16 = 15000;
pub const STATUS_PORT: u16 = 15021;
pub const STATS_PORT: u16 = 15090;
pub const PROXY_PORT: u16 = 15080;

/// How long a sidecar may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// iptables capture set up by `sluice init` before the sidecar starts.
#[derive(Debug, Clone)]
pub struct Capture {
    /// `-i`: outbound CIDRs to redirect (`*` = all).
    pub include: String,
    /// `-x`: outbound CIDRs to leave alone.
    pub exclude: String,
}

/// How to start the sidecar.
#[derive(Debug, Clone)]
pub struct SidecarOpts {
    /// `None`: no iptables rules at all (explicit-proxy use).
    pub capture: Option<Capture>,
    /// `--proxy-port` (explicit HTTP/CONNECT proxy), when set.
    pub proxy_port: Option<u16>,
    /// More arguments for `sluice sidecar`.
    pub extra_args: Vec<String>,
}

impl SidecarOpts {
    /// Capture all outbound TCP (`-i '*' -x ''`), as Istio's injector does by default.
    pub fn captured() -> SidecarOpts {
        SidecarOpts {
            capture: Some(Capture {
                include: "*".into(),
                exclude: String::new(),
            }),
            proxy_port: None,
            extra_args: Vec::new(),
        }
    }

    /// No iptables; the app uses `curl -x http://127.0.0.1:15080`.
    pub fn explicit_proxy() -> SidecarOpts {
        SidecarOpts {
            capture: None,
            proxy_port: Some(PROXY_PORT),
            extra_args: Vec::new(),
        }
    }

    /// `-i CIDRS` (comma-separated): capture only these outbound ranges.
    pub fn include(mut self, cidrs: &str) -> SidecarOpts {
        self.capture
            .get_or_insert(Capture {
                include: "*".into(),
                exclude: String::new(),
            })
            .include = cidrs.into();
        self
    }

    /// `-x CIDRS` (comma-separated): never capture these outbound ranges.
    pub fn exclude(mut self, cidrs: &str) -> SidecarOpts {
        self.capture
            .get_or_insert(Capture {
                include: "*".into(),
                exclude: String::new(),
            })
            .exclude = cidrs.into();
        self
    }

    pub fn arg(mut self, a: &str) -> SidecarOpts {
        self.extra_args.push(a.into());
        self
    }

    /// The `sluice init` arguments for this capture.
    pub fn init_args(capture: &Capture) -> Vec<String> {
        vec![
            "init".into(),
            "-p".into(),
            OUTBOUND_PORT.to_string(),
            "-u".into(),
            PROXY_UID.to_string(),
            "-m".into(),
            "REDIRECT".into(),
            "-i".into(),
            capture.include.clone(),
            "-x".into(),
            capture.exclude.clone(),
            "-b".into(),
            String::new(),
        ]
    }

    /// The `sluice sidecar` arguments.
    pub fn sidecar_args(&self, config_dir: &str) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "sidecar".into(),
            "--config".into(),
            config_dir.into(),
            "--namespace".into(),
            "default".into(),
            "--labels".into(),
            "app=sleep".into(),
            "--admin-port".into(),
            ADMIN_PORT.to_string(),
            "--status-port".into(),
            STATUS_PORT.to_string(),
            "--stats-port".into(),
            STATS_PORT.to_string(),
        ];
        if let Some(p) = self.proxy_port {
            a.push("--proxy-port".into());
            a.push(p.to_string());
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// A running sidecar. Its stdout (where the access log goes with `accessLogFile: /dev/stdout`)
/// and stderr are files in the test's directory.
pub struct Sidecar {
    pub(crate) proc: Proc,
    pub opts: SidecarOpts,
}

impl Sidecar {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Every line the sidecar wrote to stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.proc.stdout_lines()
    }

    /// The TEXT access log lines written so far.
    pub fn access_log(&self) -> Vec<AccessLogEntry> {
        self.stdout_lines()
            .iter()
            .filter_map(|l| AccessLogEntry::parse(l))
            .collect()
    }

    /// The JSON access log lines written so far.
    pub fn json_access_log(&self) -> Vec<serde_json::Map<String, serde_json::Value>> {
        parse_json_lines(&self.stdout_lines())
    }

    /// `Some(status)` if the sidecar has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.exited()
    }
}
