//! The container image, as far as it can be checked without a container engine:
//! - scripts/build-static.sh, the Dockerfile's build step, run here with the dev profile: the
//!   binary is static (no interpreter, no shared library), and runs as uid 1337 in an empty root
//!   (`chroot`, as in a `FROM scratch` image), where `sluice version` names the commit;
//! - the Dockerfile: a final stage with nothing but the binary, non-root, no shell, and its build
//!   stage runs the script; .dockerignore keeps the context to the sources.
//!
//! The build reuses every dependency of the normal dev build in target/ (scripts/test.sh builds it
//! first) and compiles only the binary's own crate again, with `crt-static`: seconds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// --- the static binary --------------------------------------------------------------------------

/// ELF facts that make an executable static: no PT_INTERP program header (no loader) and no
/// DT_NEEDED entry (no shared library). Read from the file itself, not from a tool's wording.
#[derive(Debug, PartialEq)]
struct Linking {
    interpreter: bool,
    needed: usize,
}

fn linking(elf: &[u8]) -> Linking {
    assert!(
        elf.len() > 64 && elf.starts_with(b"\x7fELF"),
        "not an ELF file"
    );
    assert_eq!(elf[4], 2, "not a 64-bit ELF");
    assert_eq!(elf[5], 1, "not little-endian");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const DT_NEEDED: u64 = 1;
    let mut facts = Linking {
        interpreter: false,
        needed: 0,
    };
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        match u32_at(ph) {
            PT_INTERP => facts.interpreter = true,
            PT_DYNAMIC => {
                // A static-pie executable has a dynamic section (for its own relocations), but
                // names no library in it.
                let (offset, size) = (u64_at(ph + 8) as usize, u64_at(ph + 32) as usize);
                for entry in elf[offset..offset + size].chunks_exact(16) {
                    let tag = u64::from_le_bytes(entry[..8].try_into().unwrap());
                    if tag == DT_NEEDED {
                        facts.needed += 1;
                    }
                }
            }
            _ => {}
        }
    }
    facts
}

#[test]
fn elf_reader_tells_a_dynamic_executable() {
    // The test's own executable is linked dynamically, as every normal build is.
    let own = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let facts = linking(&own);
    assert!(facts.interpreter && facts.needed > 0, "{facts:?}");
}

fn git_head() -> Option<String> {
    let out = Command::new("git")
        .args(["-c", "safe.directory=*", "-C"])
        .arg(repo_root())
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn build_static_script_makes_a_binary_that_runs_alone_as_uid_1337() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "root: this test runs the binary in an empty root with chroot (run the tests as root, \
         e.g. `sudo -E scripts/test.sh`)"
    );
    let out_dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(repo_root().join("scripts/build-static.sh"))
        .args(["--profile", "dev", "--out"])
        .arg(out_dir.path())
        .current_dir(repo_root())
        .output()
        .expect("run scripts/build-static.sh");
    eprintln!(
        "scripts/build-static.sh --profile dev: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "scripts/build-static.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    let bin = out_dir.path().join("sluice");
    assert_eq!(printed.lines().last(), Some(bin.to_str().unwrap()));

    let facts = linking(&std::fs::read(&bin).unwrap());
    assert_eq!(
        facts,
        Linking {
            interpreter: false,
            needed: 0
        },
        "{} is not static",
        bin.display()
    );
    let ldd = Command::new("ldd")
        .arg(&bin)
        .output()
        .expect("ldd (Debian package libc-bin)");
    let says = String::from_utf8_lossy(&ldd.stdout) + String::from_utf8_lossy(&ldd.stderr);
    assert!(
        says.contains("statically linked") || says.contains("not a dynamic executable"),
        "ldd {}: {says}",
        bin.display()
    );

    // An empty root, as in the image: the binary, a config file, and nothing else (no libc, no
    // /etc/passwd for uid 1337).
    let root = out_dir.path().join("root");
    std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    std::fs::create_dir_all(root.join("config")).unwrap();
    std::fs::copy(&bin, root.join("usr/local/bin/sluice")).unwrap();
    std::fs::write(
        root.join("config/se.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: httpbin\n\
         spec:\n  hosts: [httpbin.org]\n  ports:\n  - {number: 80, name: http, protocol: HTTP}\n  \
         resolution: DNS\n",
    )
    .unwrap();
    let in_root = |args: &[&str]| {
        Command::new("chroot")
            .arg("--userspec=1337:1337")
            .arg(&root)
            .arg("/usr/local/bin/sluice")
            .args(args)
            .output()
            .expect("chroot (Debian package coreutils)")
    };
    let version = in_root(&["version"]);
    let line = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.status.success(),
        "sluice version in an empty root: {line}{}",
        String::from_utf8_lossy(&version.stderr)
    );
    assert!(
        line.starts_with(concat!("sluice ", env!("CARGO_PKG_VERSION"), " (commit ")),
        "{line}"
    );
    if let Some(head) = git_head() {
        assert!(line.contains(&format!("(commit {head}")), "{line}");
    }
    let validate = in_root(&["validate", "/config/se.yaml"]);
    assert!(
        validate.status.success(),
        "sluice validate in an empty root: {}{}",
        String::from_utf8_lossy(&validate.stdout),
        String::from_utf8_lossy(&validate.stderr)
    );
}

// --- the Dockerfile -----------------------------------------------------------------------------

/// One instruction: its keyword (upper case) and the rest, continuation lines joined.
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((keyword.to_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

#[test]
fn dockerfile_builds_with_the_script_and_ships_only_the_binary_as_non_root() {
    let all = instructions(&read("Dockerfile"));
    let stages: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "a multi-stage build");
    let (build, last) = (
        &all[stages[0]..stages[stages.len() - 1]],
        &all[stages[stages.len() - 1]..],
    );

    // Build stage: the script the test above runs, with the commit from a build argument.
    let (_, from) = &build[0];
    let build_name = from
        .split_whitespace()
        .skip_while(|w| !w.eq_ignore_ascii_case("AS"))
        .nth(1)
        .expect("the build stage is named");
    let runs: Vec<&String> = build
        .iter()
        .filter(|(k, _)| k == "RUN")
        .map(|(_, r)| r)
        .collect();
    assert!(
        runs.iter().any(|r| r.contains("scripts/build-static.sh")),
        "the build stage runs scripts/build-static.sh: {runs:?}"
    );
    assert!(runs.iter().any(|r| r.contains("SLUICE_COMMIT")), "{runs:?}");
    assert!(build
        .iter()
        .any(|(k, r)| k == "ARG" && r.starts_with("SLUICE_COMMIT")));

    // Final stage: Debian's slim base with only iptables added (istio-init runs `sluice init`,
    // which needs iptables-restore), files copied from the build stage, a numeric non-root
    // user, the binary as entrypoint.
    let base = last[0].1.split_whitespace().next().unwrap_or("");
    assert!(
        base.ends_with("debian:bookworm-slim"),
        "final stage FROM {base}: Debian 12 slim"
    );
    for (k, rest) in &last[1..] {
        assert!(
            matches!(
                k.as_str(),
                "COPY" | "USER" | "ENTRYPOINT" | "CMD" | "LABEL" | "ENV" | "EXPOSE" | "RUN"
            ),
            "final stage: unexpected {k} {rest}"
        );
        if k == "RUN" {
            let packages: Vec<&str> = rest
                .split("--no-install-recommends")
                .nth(1)
                .unwrap_or("")
                .split_whitespace()
                .take_while(|w| !w.starts_with('&') && *w != "\\")
                .collect();
            assert_eq!(
                packages,
                ["iptables"],
                "final stage installs iptables and nothing else: RUN {rest}"
            );
        }
        if k == "COPY" {
            assert!(
                rest.starts_with(&format!("--from={build_name} ")),
                "final stage copies only from the build stage: COPY {rest}"
            );
        }
    }
    let users: Vec<&String> = last
        .iter()
        .filter(|(k, _)| k == "USER")
        .map(|(_, r)| r)
        .collect();
    assert_eq!(users.last().map(|u| u.as_str()), Some("1337:1337"));
    let entrypoint = last
        .iter()
        .find(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, r)| r)
        .expect("ENTRYPOINT");
    let entrypoint: Vec<String> =
        serde_json::from_str(entrypoint).expect("ENTRYPOINT in exec form (no shell)");
    let copied_to: Vec<&str> = last
        .iter()
        .filter(|(k, _)| k == "COPY")
        .filter_map(|(_, r)| r.split_whitespace().last())
        .collect();
    assert!(
        copied_to.contains(&entrypoint[0].as_str()),
        "ENTRYPOINT {entrypoint:?} is the copied binary ({copied_to:?})"
    );
}

/// Whether .dockerignore lets `path` into the build context: the last matching pattern decides
/// (Docker's rule), for the pattern forms it uses: `*`, `dir/`, `file`, `dir/**/name/`.
fn in_context(ignore: &str, path: &str) -> bool {
    let mut included = true;
    for line in ignore.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (exclude, pattern) = match line.strip_prefix('!') {
            Some(p) => (false, p),
            None => (true, line),
        };
        let pattern = pattern.trim_end_matches('/');
        let matches = if pattern == "*" {
            true
        } else if let Some((prefix, name)) = pattern.split_once("/**/") {
            path.starts_with(&format!("{prefix}/"))
                && path[prefix.len()..].contains(&format!("/{name}/"))
        } else {
            path == pattern || path.starts_with(&format!("{pattern}/"))
        };
        if matches {
            included = !exclude;
        }
    }
    included
}

#[test]
fn dockerignore_keeps_the_context_to_the_sources() {
    let ignore = read(".dockerignore");
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "crates/sluice/src/main.rs",
        "crates/sluice/build.rs",
        "crates/xds/proto/networking/v1alpha3/networking.proto",
        "examples/demo/00-mesh.yaml",
        "scripts/build-static.sh",
    ] {
        assert!(
            repo_root().join(needed).exists(),
            "{needed} no longer exists: update this test"
        );
        assert!(in_context(&ignore, needed), "{needed} is left out");
    }
    for left_out in [
        "target/debug/sluice",
        "crates/sluice/target/debug/sluice",
        ".git/HEAD",
        ".venv/bin/python",
        "deploy/default/ca/root-key.pem",
        "bench/out/x",
    ] {
        assert!(!in_context(&ignore, left_out), "{left_out} is sent");
    }
}
