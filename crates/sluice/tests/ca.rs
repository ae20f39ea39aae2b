//! `sluice ca`: init / issue / show with the built binary, the files and modes it writes, refusal
//! to replace a root, and what `openssl` sees in the certificates.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn sluice(args: &[&str]) -> Output {
    Command::new(SLUICE)
        .args(args)
        .output()
        .expect("run sluice")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(args: &[&str]) -> String {
    let out = sluice(args);
    assert!(out.status.success(), "sluice {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("this test needs the `openssl` CLI (apt-get install openssl): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn ca_init_issue_show_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("workload");

    let said = ok(&[
        "ca",
        "init",
        "--dir",
        s(&ca),
        "--trust-domain",
        "example.org",
    ]);
    assert!(said.contains("root-cert.pem"), "{said}");
    assert_eq!(mode(&ca.join("root-key.pem")), 0o600);
    let root = openssl(&[
        "x509",
        "-in",
        s(&ca.join("root-cert.pem")),
        "-noout",
        "-text",
    ]);
    assert!(root.contains("CA:TRUE"), "{root}");
    assert!(root.contains("sluice mesh root"), "{root}");
    assert!(
        root.contains("O=example.org") || root.contains("O = example.org"),
        "{root}"
    );

    // The trust domain comes from the root unless given.
    let said = ok(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "--namespace",
        "foo",
        "--service-account",
        "httpbin",
        "--out",
        s(&out),
        "--ttl",
        "2h",
    ]);
    assert!(
        said.contains("spiffe://example.org/ns/foo/sa/httpbin"),
        "{said}"
    );
    for f in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert_eq!(mode(&out.join("key.pem")), 0o600);
    assert_eq!(
        std::fs::read(out.join("root-cert.pem")).unwrap(),
        std::fs::read(ca.join("root-cert.pem")).unwrap()
    );

    let leaf = openssl(&[
        "x509",
        "-in",
        s(&out.join("cert-chain.pem")),
        "-noout",
        "-text",
    ]);
    assert!(
        leaf.contains("URI:spiffe://example.org/ns/foo/sa/httpbin"),
        "{leaf}"
    );
    assert!(leaf.contains("TLS Web Server Authentication"), "{leaf}");
    assert!(leaf.contains("TLS Web Client Authentication"), "{leaf}");
    assert!(
        leaf.contains("prime256v1") || leaf.contains("P-256"),
        "{leaf}"
    );
    let verified = openssl(&[
        "verify",
        "-CAfile",
        s(&ca.join("root-cert.pem")),
        s(&out.join("cert-chain.pem")),
    ]);
    assert!(verified.contains(": OK"), "{verified}");
    // The key is the certificate's.
    let cert_pub = openssl(&[
        "x509",
        "-in",
        s(&out.join("cert-chain.pem")),
        "-noout",
        "-pubkey",
    ]);
    let key_pub = openssl(&["pkey", "-in", s(&out.join("key.pem")), "-pubout"]);
    assert_eq!(cert_pub, key_pub);

    let shown = ok(&["ca", "show", s(&out.join("cert-chain.pem"))]);
    assert!(
        shown.contains("spiffe id:  spiffe://example.org/ns/foo/sa/httpbin"),
        "{shown}"
    );
    assert!(shown.contains("not before: "), "{shown}");
    assert!(shown.contains("not after:  "), "{shown}");
    assert!(
        shown.contains("expires in 1h 59m") || shown.contains("expires in 2h 0m"),
        "{shown}"
    );
    assert!(shown.contains("ca:         no"), "{shown}");
    let shown = ok(&["ca", "show", s(&ca.join("root-cert.pem"))]);
    assert!(shown.contains("CN=sluice mesh root"), "{shown}");
    assert!(shown.contains("spiffe id:  -"), "{shown}");
    assert!(shown.contains("ca:         yes"), "{shown}");

    // Issuing again replaces the pair in place; an explicit trust domain wins.
    let before = std::fs::read(out.join("cert-chain.pem")).unwrap();
    ok(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "--namespace",
        "foo",
        "--service-account",
        "httpbin",
        "--out",
        s(&out),
        "--trust-domain",
        "other.domain",
    ]);
    assert_ne!(std::fs::read(out.join("cert-chain.pem")).unwrap(), before);
    let shown = ok(&["ca", "show", s(&out.join("cert-chain.pem"))]);
    assert!(
        shown.contains("spiffe://other.domain/ns/foo/sa/httpbin"),
        "{shown}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn ca_init_refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path();
    ok(&["ca", "init", "--dir", s(ca)]);
    let first = std::fs::read(ca.join("root-cert.pem")).unwrap();

    let out = sluice(&["ca", "init", "--dir", s(ca)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&ca.join("root-cert.pem").display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(std::fs::read(ca.join("root-cert.pem")).unwrap(), first);

    // Only the key left behind is still an existing root.
    std::fs::remove_file(ca.join("root-cert.pem")).unwrap();
    let out = sluice(&["ca", "init", "--dir", s(ca)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("root-key.pem"));

    ok(&["ca", "init", "--dir", s(ca), "--force", "--ttl", "48h"]);
    assert_ne!(std::fs::read(ca.join("root-cert.pem")).unwrap(), first);
    assert_eq!(mode(&ca.join("root-key.pem")), 0o600);
    let shown = ok(&["ca", "show", s(&ca.join("root-cert.pem"))]);
    assert!(
        shown.contains("expires in 47h 59m") || shown.contains("expires in 2 days"),
        "{shown}"
    );
}

#[test]
fn ca_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");

    let out = sluice(&[
        "ca",
        "issue",
        "--dir",
        s(&missing),
        "--namespace",
        "a",
        "--service-account",
        "b",
        "--out",
        s(&tmp.path().join("out")),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&missing.join("root-cert.pem").display().to_string()),
        "{stderr}"
    );

    let out = sluice(&["ca", "show", s(&missing)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(s(&missing)));

    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "hello\n").unwrap();
    let out = sluice(&["ca", "show", s(&junk)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(s(&junk)) && stderr.contains("no PEM certificate"),
        "{stderr}"
    );

    // A root key that is not PKCS#8 (as `openssl ecparam -genkey` writes it) is explained.
    let ca = tmp.path().join("ca");
    ok(&["ca", "init", "--dir", s(&ca)]);
    let sec1 = openssl(&["ec", "-in", s(&ca.join("root-key.pem"))]);
    std::fs::write(ca.join("root-key.pem"), sec1).unwrap();
    let out = sluice(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "--namespace",
        "a",
        "--service-account",
        "b",
        "--out",
        s(&tmp.path().join("out")),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("root-key.pem") && stderr.contains("PKCS#8"),
        "{stderr}"
    );

    let out = sluice(&["ca", "init", "--dir", s(&ca), "--ttl", "soon"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn ca_help_describes_the_subcommands() {
    let help = ok(&["ca", "--help"]);
    for sub in ["init", "issue", "show"] {
        assert!(help.contains(sub), "{help}");
    }
    let help = ok(&["ca", "issue", "--help"]);
    assert!(
        help.contains("--service-account") && help.contains("cert-chain.pem"),
        "{help}"
    );
}

#[test]
fn ca_issue_gives_the_files_to_the_sidecar_user() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca");
    let out = dir.path().join("workload");
    ok(&["ca", "init", "--dir", s(&ca)]);
    ok(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "--namespace",
        "student1",
        "--service-account",
        "api",
        "--out",
        s(&out),
        "--owner",
        "1337:1337",
    ]);
    use std::os::unix::fs::MetadataExt;
    for name in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
        let meta = std::fs::metadata(out.join(name)).expect("issued file");
        assert_eq!((meta.uid(), meta.gid()), (1337, 1337), "{name}");
    }
    assert_eq!(mode(&out.join("key.pem")), 0o600, "the key stays private");
    let bad = sluice(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "--namespace",
        "a",
        "--service-account",
        "b",
        "--out",
        s(&out),
        "--owner",
        "sidecar",
    ]);
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("is not UID or UID:GID"),
        "{}",
        text(&bad)
    );
}
