//! Network namespaces: created with `ip netns add`, loopback up, deleted on drop (also when the test
//! panics), together with every process still inside and `/etc/netns/<name>/`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::prereq::tools;
use crate::process::{run_checked, scrub_env};

/// A named network namespace owned by the test.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and brings its loopback up. An existing namespace of the same name
    /// (left by a killed run of the same slot) is removed first.
    pub fn create(name: &str) -> Netns {
        assert!(name.len() < 64, "netns name too long: {name}");
        if list().iter().any(|n| n == name) {
            remove(name);
        }
        run_checked(
            "create netns",
            Command::new(&tools().ip).args(["netns", "add", name]),
        );
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <ns> <program> …`, with proxy variables scrubbed from the environment.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let program = program.as_ref();
        // Bare names are resolved here (PATH plus the sbin directories), not by `ip`.
        let resolved = match program.to_str() {
            Some(name) if !name.contains('/') => crate::prereq::which(name),
            _ => None,
        };
        let mut c = Command::new(&tools().ip);
        c.args(["netns", "exec", &self.name]);
        match resolved {
            Some(p) => c.arg(p),
            None => c.arg(program),
        };
        scrub_env(&mut c);
        c
    }

    /// Runs `ip -n <ns> <args>`; panics on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        run_checked(
            &format!("ip -n {} {}", self.name, args.join(" ")),
            Command::new(&tools().ip)
                .arg("-n")
                .arg(&self.name)
                .args(args),
        )
    }

    /// Runs a program inside the namespace to completion; panics on failure; returns stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        run_checked(
            &format!("{program} in {}", self.name),
            self.cmd(program).args(args),
        )
    }

    /// Runs a program inside the namespace; returns (success, stdout + stderr).
    pub fn try_run(&self, program: &str, args: &[&str]) -> (bool, String) {
        match self.cmd(program).args(args).stdin(Stdio::null()).output() {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, format!("cannot run {program}: {e}")),
        }
    }

    /// The directory whose files `ip netns exec` bind-mounts over `/etc` (e.g. `resolv.conf`).
    pub fn etc_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }

    /// Writes `/etc/netns/<ns>/resolv.conf`.
    pub fn set_resolv_conf(&self, content: &str) {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let path = dir.join("resolv.conf");
        std::fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Writes `/etc/netns/<ns>/hosts`, which `ip netns exec` bind-mounts over `/etc/hosts` for
    /// every program started in the namespace from then on.
    pub fn set_hosts(&self, content: &str) {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let path = dir.join("hosts");
        std::fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

/// Names of all namespaces known to `ip netns`.
pub fn list() -> Vec<String> {
    let out = Command::new(&tools().ip).args(["netns", "list"]).output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Kills every process inside the namespace (all started by this harness), deletes it and its
/// `/etc/netns` directory. Errors are ignored: this runs in Drop and in stale-slot cleanup.
pub fn remove(name: &str) {
    for _ in 0..3 {
        let out = Command::new(&tools().ip)
            .args(["netns", "pids", name])
            .output();
        let pids: Vec<i32> = out
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: plain syscall; these pids are processes inside this test's own namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = Command::new(&tools().ip)
        .args(["netns", "delete", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(name));
}

/// Creates network namespace `name` plugged into `hub`'s bridge `br0` by a veth pair (named
/// after the slot and the address's last octet, so parallel tests never clash), with `ip/24`
/// on its `eth0` plus `extra` /32 addresses.
pub fn wire_to_hub(
    hub: &Netns,
    slot: &crate::slot::Slot,
    name: &str,
    ip: std::net::Ipv4Addr,
    extra: &[std::net::Ipv4Addr],
) -> Netns {
    let ns = Netns::create(name);
    let host = ip.octets()[3];
    let idx = slot.index();
    let (inside, outside) = (format!("sl{idx:03}p{host}"), format!("sl{idx:03}h{host}"));
    run_checked(
        "create veth pair",
        Command::new(&tools().ip).args([
            "link",
            "add",
            &inside,
            "netns",
            ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            &outside,
            "netns",
            hub.name(),
        ]),
    );
    ns.ip(&["link", "set", &inside, "name", "eth0"]);
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    for e in extra {
        ns.ip(&["addr", "add", &format!("{e}/32"), "dev", "eth0"]);
    }
    ns.ip(&["link", "set", "eth0", "up"]);
    hub.ip(&["link", "set", &outside, "master", "br0"]);
    hub.ip(&["link", "set", &outside, "up"]);
    ns
}
