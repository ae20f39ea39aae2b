//! Long-running child processes (dnsmasq, gunicorn, the sidecar) with their output in log files,
//! stopped on drop, and a log book that prints every log when a test fails.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every log file of one test, printed when the test fails.
#[derive(Clone, Default)]
pub struct LogBook(Arc<Mutex<Vec<(String, PathBuf)>>>);

impl LogBook {
    /// Registers a file to print on failure.
    pub fn add(&self, label: &str, path: &Path) {
        self.lock().push((label.to_string(), path.to_path_buf()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, PathBuf)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last `max_lines` lines of every registered log.
    pub fn dump(&self, max_lines: usize) -> String {
        let mut out = String::new();
        for (label, path) in self.lock().iter() {
            let text =
                std::fs::read_to_string(path).unwrap_or_else(|e| format!("<cannot read: {e}>\n"));
            let lines: Vec<&str> = text.lines().collect();
            let skip = lines.len().saturating_sub(max_lines);
            let _ = writeln!(out, "───── {label} ({}) ─────", path.display());
            if skip > 0 {
                let _ = writeln!(out, "[… {skip} earlier lines]");
            }
            for l in &lines[skip..] {
                let _ = writeln!(out, "{l}");
            }
            if lines.is_empty() {
                let _ = writeln!(out, "<empty>");
            }
        }
        out
    }
}

/// A child process whose stdout and stderr go to `<dir>/<label>.stdout.log` / `.stderr.log`.
pub struct Proc {
    label: String,
    child: Child,
    stop_signal: i32,
    stdout: PathBuf,
    stderr: PathBuf,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd`. `owner` makes the log files belong to that uid (a program running as the proxy
    /// user may reopen `/dev/stdout`, which needs write permission on the file itself).
    /// `stop_signal` is sent first on [`Proc::stop`]; SIGKILL follows after a grace period.
    pub fn spawn(
        label: &str,
        mut cmd: Command,
        dir: &Path,
        logs: &LogBook,
        owner: Option<u32>,
        stop_signal: i32,
    ) -> Proc {
        let stdout = dir.join(format!("{label}.stdout.log"));
        let stderr = dir.join(format!("{label}.stderr.log"));
        let out =
            File::create(&stdout).unwrap_or_else(|e| panic!("create {}: {e}", stdout.display()));
        let err =
            File::create(&stderr).unwrap_or_else(|e| panic!("create {}: {e}", stderr.display()));
        if let Some(uid) = owner {
            for p in [&stdout, &stderr] {
                chown(p, Some(uid), Some(uid))
                    .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
            }
        }
        logs.add(&format!("{label} stdout"), &stdout);
        logs.add(&format!("{label} stderr"), &stderr);
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // If the test process dies without unwinding (killed by a timeout), its servers die too.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label} ({cmd:?}): {e}"));
        Proc {
            label: label.to_string(),
            child,
            stop_signal,
            stdout,
            stderr,
            exit: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// The whole stdout written so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// The lines of stdout written so far (a torn last line is left out).
    pub fn stdout_lines(&self) -> Vec<String> {
        let Ok(f) = File::open(&self.stdout) else {
            return Vec::new();
        };
        let text = {
            let mut s = String::new();
            let mut r = BufReader::new(f);
            loop {
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if !line.ends_with('\n') => break,
                    Ok(_) => s.push_str(&line),
                }
            }
            s
        };
        text.lines().map(str::to_string).collect()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Sends the stop signal, waits up to `grace`, then SIGKILLs. Idempotent.
    pub fn stop_within(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.exited().is_some() {
            return self.exit;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain syscall on our own child's pid (not yet reaped, so it cannot be reused).
        unsafe { libc::kill(pid, self.stop_signal) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return self.exit;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.exit = self.child.wait().ok();
        self.exit
    }

    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.stop_within(Duration::from_secs(3))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a short command to completion; panics with its output when it fails.
pub fn run_checked(what: &str, cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what}: {cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes proxy settings from a command's environment so curl and friends never use a proxy that
/// the calling environment happens to define.
pub fn scrub_env(cmd: &mut Command) -> &mut Command {
    for v in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
        "CURL_HOME",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ] {
        cmd.env_remove(v);
    }
    // Programs started inside a namespace find root's tools even when PATH lacks the sbin dirs.
    let path = std::env::var("PATH").unwrap_or_default();
    let mut dirs: Vec<&str> = path.split(':').filter(|d| !d.is_empty()).collect();
    for d in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    cmd.env("PATH", dirs.join(":"));
    cmd
}
