//! Applying and removing the rules: `iptables-restore`, `iptables-save`, `iptables -D` and `ip`.
//!
//! Apply is "remove whatever ISTIO_* state is there, then `iptables-restore --noflush`", so running
//! `sluice init` twice leaves one copy of every rule. Removal never fails because something is
//! already gone.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::config::{CaptureConfig, InboundPorts, InitError, InterceptionMode};
use super::rules::{chain, is_builtin, IpFamily, Rule, RuleSet};

/// Tables in which ISTIO_* chains are looked for on cleanup. sluice writes nat and mangle; raw is
/// included because istio-iptables' DNS capture writes there, and a pod may be switched over.
const CLEANUP_TABLES: &[&str] = &["nat", "mangle", "raw"];

/// Upper bound on repeated deletions of one rule (a rule added by hand many times still ends).
const MAX_DUPLICATE_DELETIONS: usize = 64;

/// Where programs are looked up after `$PATH`: iptables and ip live in sbin, which non-root
/// `PATH`s often lack.
const FALLBACK_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Finds `name` in `search_path` (a `PATH`-style list), then in the sbin directories.
pub(crate) fn find_program(name: &str, search_path: Option<&OsStr>) -> Option<PathBuf> {
    let from_path = search_path.into_iter().flat_map(std::env::split_paths);
    let fallbacks = FALLBACK_DIRS.iter().map(PathBuf::from);
    from_path
        .chain(fallbacks)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Where programs are looked up: `$PATH` then the sbin directories; tests pass their own.
pub(crate) struct ProgramLookup {
    search_path: Option<std::ffi::OsString>,
    fallbacks: bool,
}

impl ProgramLookup {
    /// `$PATH`, then [`FALLBACK_DIRS`].
    pub fn from_env() -> Self {
        ProgramLookup {
            search_path: std::env::var_os("PATH"),
            fallbacks: true,
        }
    }

    /// Only `dir`: lets tests stand for a host without some program.
    #[cfg(test)]
    pub fn only(dir: &Path) -> Self {
        ProgramLookup {
            search_path: Some(dir.as_os_str().to_owned()),
            fallbacks: false,
        }
    }

    fn require(&self, program: &'static str, package: &'static str) -> Result<PathBuf, InitError> {
        let found = if self.fallbacks {
            find_program(program, self.search_path.as_deref())
        } else {
            self.search_path
                .iter()
                .flat_map(std::env::split_paths)
                .map(|dir| dir.join(program))
                .find(|candidate| is_executable(candidate))
        };
        found.ok_or(InitError::MissingProgram { program, package })
    }
}

/// The iptables programs of one address family.
struct Iptables {
    iptables: PathBuf,
    save: PathBuf,
    restore: PathBuf,
}

impl Iptables {
    fn locate(family: IpFamily, lookup: &ProgramLookup) -> Result<Self, InitError> {
        let (iptables, save, restore) = match family {
            IpFamily::V4 => ("iptables", "iptables-save", "iptables-restore"),
            IpFamily::V6 => ("ip6tables", "ip6tables-save", "ip6tables-restore"),
        };
        // Look up restore first: it is the one the error message of a bare system should name.
        let restore = lookup.require(restore, "iptables")?;
        Ok(Iptables {
            iptables: lookup.require(iptables, "iptables")?,
            save: lookup.require(save, "iptables")?,
            restore,
        })
    }

    /// `iptables-restore --noflush`: adds to the tables, leaving foreign rules alone.
    fn restore(&self, script: &str) -> Result<(), InitError> {
        run_checked(&self.restore, &["--noflush", "--wait"], Some(script)).map(drop)
    }

    fn save(&self) -> Result<String, InitError> {
        run_checked(&self.save, &[], None)
    }

    /// Deletes every copy of `rule`; returns how many were deleted. A rule that is absent (or that
    /// this kernel cannot even express) simply ends the loop.
    fn delete_all_copies(&self, rule: &Rule) -> usize {
        let mut args: Vec<&str> = vec!["--wait", "-t", rule.table.name(), "-D", &rule.chain];
        args.extend(rule.spec.iter().map(String::as_str));
        (0..MAX_DUPLICATE_DELETIONS)
            .take_while(|_| {
                run_command(&self.iptables, &args, None).is_ok_and(|out| out.status.success())
            })
            .count()
    }
}

fn command_line(program: &Path, args: &[&str]) -> String {
    let mut line = program.display().to_string();
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    line
}

fn run_command(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<Output, InitError> {
    let spawn_error = |source| InitError::Spawn {
        command: command_line(program, args),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let written = match (stdin, child.stdin.take()) {
        // The pipe is dropped (closed) at the end of this arm, which ends the program's input.
        (Some(input), Some(mut pipe)) => pipe.write_all(input.as_bytes()),
        _ => Ok(()),
    };
    let output = child.wait_with_output().map_err(spawn_error)?;
    match written {
        // A program that exits early breaks the pipe: its own exit status and stderr say why.
        Err(_) if !output.status.success() => Ok(output),
        Err(e) => Err(spawn_error(e)),
        Ok(()) => Ok(output),
    }
}

/// Runs a command that must succeed; returns its stdout.
fn run_checked(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, InitError> {
    let output = run_command(program, args, stdin)?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let detail = match stdin.and_then(|input| failed_input_line(&stderr, input)) {
        Some(line) => format!("{stderr} (the line was: {line})"),
        None => stderr,
    };
    Err(InitError::CommandFailed {
        command: command_line(program, args),
        status: output.status,
        detail,
    })
}

/// iptables-restore reports "line N failed": return that line of the input, so the error shows
/// which rule the kernel refused.
fn failed_input_line<'a>(stderr: &str, input: &'a str) -> Option<&'a str> {
    let after = stderr.split("line ").nth(1)?;
    let number: usize = after
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    input.lines().nth(number.checked_sub(1)?)
}

/// One table of `iptables-save` output.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SavedTable {
    /// Table name (`nat`).
    pub name: String,
    /// Chains declared with `:NAME POLICY [counters]`, built-in ones included.
    pub chains: Vec<String>,
    /// `(chain, argv after "-A CHAIN")`, in order.
    pub rules: Vec<(String, Vec<String>)>,
}

/// Parses `iptables-save` output.
pub(crate) fn parse_save(text: &str) -> Vec<SavedTable> {
    let mut tables = Vec::new();
    let mut current: Option<SavedTable> = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('*') {
            current = Some(SavedTable {
                name: name.trim().to_string(),
                ..SavedTable::default()
            });
        } else if line == "COMMIT" {
            tables.extend(current.take());
        } else if let (Some(table), Some(decl)) = (current.as_mut(), line.strip_prefix(':')) {
            if let Some(name) = decl.split_whitespace().next() {
                table.chains.push(name.to_string());
            }
        } else if let (Some(table), Some(rest)) = (current.as_mut(), line.strip_prefix("-A ")) {
            let mut words = split_words(rest).into_iter();
            if let Some(chain_name) = words.next() {
                table.rules.push((chain_name, words.collect()));
            }
        }
    }
    tables
}

/// Splits an iptables-save rule into words; iptables-save double-quotes values with spaces
/// (comments) and backslash-escapes quotes inside them.
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => word.extend(chars.next()),
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

fn jump_target(words: &[String]) -> Option<&str> {
    words
        .iter()
        .position(|w| w == "-j" || w == "-g")
        .and_then(|i| words.get(i + 1))
        .map(String::as_str)
}

/// An iptables-restore script that removes every ISTIO_* chain of `tables` and every rule
/// elsewhere that jumps to one, in one transaction per table. Empty when there is nothing to do.
pub(crate) fn cleanup_script(tables: &[SavedTable]) -> String {
    let mut script = String::new();
    for table in tables
        .iter()
        .filter(|t| CLEANUP_TABLES.contains(&t.name.as_str()))
    {
        let istio_chains: Vec<&str> = table
            .chains
            .iter()
            .map(String::as_str)
            .filter(|c| c.starts_with(chain::PREFIX))
            .collect();
        // Rule numbers per chain, so jumps can be deleted by position (no need to re-quote them).
        let mut position_in_chain: BTreeMap<&str, usize> = BTreeMap::new();
        let mut jumps: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (chain_name, words) in &table.rules {
            let position = position_in_chain.entry(chain_name).or_default();
            *position += 1;
            let jumps_to_istio = jump_target(words).is_some_and(|t| t.starts_with(chain::PREFIX));
            if !chain_name.starts_with(chain::PREFIX) && jumps_to_istio {
                jumps.entry(chain_name).or_default().push(*position);
            }
        }
        if istio_chains.is_empty() && jumps.is_empty() {
            continue;
        }
        script.push_str(&format!("*{}\n", table.name));
        for (chain_name, positions) in &jumps {
            // Highest first, so earlier deletions do not renumber the later ones.
            for position in positions.iter().rev() {
                script.push_str(&format!("-D {chain_name} {position}\n"));
            }
        }
        // Flush all before deleting any: ISTIO chains jump to each other.
        for chain_name in &istio_chains {
            script.push_str(&format!("-F {chain_name}\n"));
        }
        for chain_name in &istio_chains {
            script.push_str(&format!("-X {chain_name}\n"));
        }
        script.push_str("COMMIT\n");
    }
    script
}

/// Rules of `set` that live in built-in chains and do not jump to an ISTIO_* chain (e.g.
/// `-A OUTPUT -o eth1 -j RETURN`, TPROXY's CONNMARK rules): the ones `cleanup_script` cannot
/// recognise, so they are deleted by their exact spec.
fn standalone_builtin_rules(set: &RuleSet) -> Vec<&Rule> {
    let mut seen = HashSet::new();
    set.rules
        .iter()
        .filter(|r| {
            is_builtin(&r.chain) && !r.target().is_some_and(|t| t.starts_with(chain::PREFIX))
        })
        .filter(|r| seen.insert((r.table, &r.chain, &r.spec)))
        .collect()
}

/// Removes sluice's/Istio's iptables state of one family: ISTIO_* chains, jumps to them, and the
/// built-in-chain rules `removable` describes.
fn remove_rules(tools: &Iptables, removable: &RuleSet) -> Result<(), InitError> {
    let before = parse_save(&tools.save()?);
    let chain_has_rules = |table: &str, chain_name: &str| {
        before
            .iter()
            .filter(|t| t.name == table)
            .any(|t| t.rules.iter().any(|(c, _)| c == chain_name))
    };
    let mut deleted = 0;
    for rule in standalone_builtin_rules(removable) {
        // Skip the (slow, one process per try) spec deletion when the chain is empty anyway.
        if chain_has_rules(rule.table.name(), &rule.chain) {
            deleted += tools.delete_all_copies(rule);
        }
    }
    // The cleanup script deletes jumps by position: positions must come from the current state.
    let saved = if deleted > 0 {
        parse_save(&tools.save()?)
    } else {
        before
    };
    let script = cleanup_script(&saved);
    if !script.is_empty() {
        tools.restore(&script)?;
    }
    Ok(())
}

/// `ip` with the family switch.
struct IpRoute {
    ip: PathBuf,
    family: IpFamily,
}

impl IpRoute {
    fn locate(family: IpFamily, lookup: &ProgramLookup) -> Result<Self, InitError> {
        Ok(IpRoute {
            ip: lookup.require("ip", "iproute2")?,
            family,
        })
    }

    fn args<'a>(&self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut args = match self.family {
            IpFamily::V4 => vec!["-4"],
            IpFamily::V6 => vec!["-6"],
        };
        args.extend_from_slice(rest);
        args
    }

    fn try_run(&self, rest: &[&str]) -> bool {
        run_command(&self.ip, &self.args(rest), None).is_ok_and(|out| out.status.success())
    }

    fn run(&self, rest: &[&str]) -> Result<(), InitError> {
        run_checked(&self.ip, &self.args(rest), None).map(drop)
    }

    /// Removes `fwmark MARK lookup TABLE` rules and the local default route of TABLE; returns
    /// whether a rule was there.
    fn remove_tproxy_routing(&self, mark: &str, table: &str) -> bool {
        let removed = (0..MAX_DUPLICATE_DELETIONS)
            .take_while(|_| self.try_run(&["rule", "del", "fwmark", mark, "lookup", table]))
            .count();
        if removed > 0 {
            self.try_run(&[
                "route", "del", "local", "default", "dev", "lo", "table", table,
            ]);
        }
        removed > 0
    }

    /// `ip rule add fwmark MARK lookup TABLE` and `ip route add local default dev lo table TABLE`:
    /// packets marked by ISTIO_DIVERT / TPROXY are delivered locally, to the proxy's socket.
    fn add_tproxy_routing(&self, mark: &str, table: &str) -> Result<(), InitError> {
        self.remove_tproxy_routing(mark, table);
        self.run(&["rule", "add", "fwmark", mark, "lookup", table])?;
        self.run(&[
            "route", "replace", "local", "default", "dev", "lo", "table", table,
        ])
    }
}

/// The families whose rules exist for `cfg`.
fn families(cfg: &CaptureConfig) -> Vec<IpFamily> {
    if cfg.ipv6.captures() {
        vec![IpFamily::V4, IpFamily::V6]
    } else {
        vec![IpFamily::V4]
    }
}

/// What cleanup must be able to delete by spec: the built-in-chain rules of both modes (a pod may
/// switch from TPROXY to REDIRECT between runs).
fn removable_rules(cfg: &CaptureConfig, family: IpFamily) -> RuleSet {
    let mut both_modes = cfg.clone();
    both_modes.mode = InterceptionMode::Tproxy;
    if both_modes.inbound_ports == InboundPorts::None {
        both_modes.inbound_ports = InboundPorts::AllExcept(Vec::new());
    }
    super::rules::build(&both_modes, family)
}

/// Removes all ISTIO_* chains, the jumps to them, the built-in-chain rules `cfg` generates and the
/// TPROXY policy routing, in both families: IPv6 rules are removed whenever ip6tables can, since
/// an earlier run may have captured IPv6 because of an address the namespace no longer has.
/// Succeeds when there is nothing to remove.
pub(crate) fn cleanup(cfg: &CaptureConfig) -> Result<(), InitError> {
    let lookup = ProgramLookup::from_env();
    let mark = cfg.tproxy_mark.to_string();
    let table = cfg.tproxy_route_table.to_string();
    for family in [IpFamily::V4, IpFamily::V6] {
        let required = family == IpFamily::V4 || cfg.ipv6.captures();
        let tools = match Iptables::locate(family, &lookup) {
            Ok(tools) => tools,
            Err(e) if required => return Err(e),
            // No ip6tables: there can be no IPv6 rules to remove either.
            Err(_) => continue,
        };
        match remove_rules(&tools, &removable_rules(cfg, family)) {
            Ok(()) => {}
            Err(e) if required => return Err(e),
            // IPv6 disabled in this kernel/namespace: nothing of ours can be there.
            Err(_) => continue,
        }
        if let Ok(ip) = IpRoute::locate(family, &lookup) {
            ip.remove_tproxy_routing(&mark, &table);
        }
    }
    Ok(())
}

/// Everything `apply` runs, found before anything changes.
struct ApplyTools {
    iptables: Vec<Iptables>,
    ip: Vec<IpRoute>,
}

/// Finds the programs `sets` need. A missing IPv6 program is an [`InitError::Ipv6Unprotected`]
/// naming why IPv6 is captured: without it the pod's IPv6 egress would bypass the sidecar.
fn locate_tools(
    cfg: &CaptureConfig,
    sets: &[RuleSet],
    lookup: &ProgramLookup,
) -> Result<ApplyTools, InitError> {
    let iptables = sets
        .iter()
        .map(|set| Iptables::locate(set.family, lookup).map_err(|e| ipv6_error(cfg, set.family, e)))
        .collect::<Result<_, _>>()?;
    let tproxy_routing =
        cfg.mode == InterceptionMode::Tproxy && cfg.inbound_ports != InboundPorts::None;
    let ip = if tproxy_routing || cfg.ipv6.captures() {
        families(cfg)
            .into_iter()
            .map(|family| IpRoute::locate(family, lookup).map_err(|e| ipv6_error(cfg, family, e)))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    Ok(ApplyTools { iptables, ip })
}

/// Says why an IPv6 step was needed when it fails; IPv4 errors are passed on as they are.
fn ipv6_error(cfg: &CaptureConfig, family: IpFamily, error: InitError) -> InitError {
    match family {
        IpFamily::V4 => error,
        IpFamily::V6 => InitError::Ipv6Unprotected {
            reason: cfg.ipv6.to_string(),
            source: Box::new(error),
        },
    }
}

/// Replaces any existing ISTIO_* state with `sets` (one per family), then sets up TPROXY policy
/// routing when inbound capture uses TPROXY.
pub(crate) fn apply(cfg: &CaptureConfig, sets: &[RuleSet]) -> Result<(), InitError> {
    // Find every program before changing anything, so a missing one leaves the pod untouched.
    let tools = locate_tools(cfg, sets, &ProgramLookup::from_env())?;
    let tproxy_routing =
        cfg.mode == InterceptionMode::Tproxy && cfg.inbound_ports != InboundPorts::None;

    cleanup(cfg)?;
    for (set, iptables) in sets.iter().zip(&tools.iptables) {
        iptables
            .restore(&set.to_restore())
            .map_err(|e| ipv6_error(cfg, set.family, e))?;
    }

    for ip in &tools.ip {
        if ip.family == IpFamily::V6 {
            // The inbound passthrough binds ::6 as its source; unlike 127.0.0.0/8, IPv6 loopback
            // is a single address, so ::6 must be added to lo explicitly.
            ip.run(&["addr", "replace", "::6/128", "dev", "lo"])
                .map_err(|e| ipv6_error(cfg, IpFamily::V6, e))?;
        }
        if tproxy_routing {
            ip.add_tproxy_routing(
                &cfg.tproxy_mark.to_string(),
                &cfg.tproxy_route_table.to_string(),
            )
            .map_err(|e| ipv6_error(cfg, ip.family, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::ipv6::Ipv6Decision;
    use super::*;

    const SAVED: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables)
*mangle
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:ISTIO_DIVERT - [0:0]
:ISTIO_INBOUND - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A PREROUTING -p tcp -m mark --mark 0x539 -j CONNMARK --save-mark
-A ISTIO_INBOUND -p tcp -j ISTIO_DIVERT
-A ISTIO_DIVERT -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:USER_CHAIN - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
-A PREROUTING -m comment --comment "keep -j ISTIO_X me" -j RETURN
-A OUTPUT -j USER_CHAIN
-A OUTPUT -j ISTIO_OUTPUT
-A OUTPUT -p tcp -j RETURN
-A OUTPUT -j ISTIO_OUTPUT
-A USER_CHAIN -g ISTIO_REDIRECT
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
*filter
:INPUT ACCEPT [0:0]
:ISTIO_FOREIGN - [0:0]
COMMIT
"#;

    #[test]
    fn parses_iptables_save_with_quoted_words() {
        let tables = parse_save(SAVED);
        assert_eq!(tables.len(), 3);
        let nat = &tables[1];
        assert_eq!(nat.name, "nat");
        assert_eq!(
            nat.chains,
            [
                "PREROUTING",
                "OUTPUT",
                "USER_CHAIN",
                "ISTIO_OUTPUT",
                "ISTIO_REDIRECT"
            ]
        );
        assert_eq!(
            nat.rules[0],
            (
                "PREROUTING".to_string(),
                [
                    "-m",
                    "comment",
                    "--comment",
                    "keep -j ISTIO_X me",
                    "-j",
                    "RETURN"
                ]
                .map(String::from)
                .to_vec()
            )
        );
    }

    #[test]
    fn cleanup_script_removes_istio_chains_and_jumps_only() {
        let script = cleanup_script(&parse_save(SAVED));
        let expected = "\
*mangle
-D PREROUTING 1
-F ISTIO_DIVERT
-F ISTIO_INBOUND
-X ISTIO_DIVERT
-X ISTIO_INBOUND
COMMIT
*nat
-D OUTPUT 4
-D OUTPUT 2
-D USER_CHAIN 1
-F ISTIO_OUTPUT
-F ISTIO_REDIRECT
-X ISTIO_OUTPUT
-X ISTIO_REDIRECT
COMMIT
";
        assert_eq!(script, expected);
    }

    #[test]
    fn cleanup_script_is_empty_without_istio_state() {
        let clean = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j RETURN\nCOMMIT\n";
        assert_eq!(cleanup_script(&parse_save(clean)), "");
        assert_eq!(cleanup_script(&parse_save("")), "");
    }

    #[test]
    fn restore_errors_quote_the_failing_line() {
        let input = "* nat\n-N ISTIO_OUTPUT\n-A ISTIO_OUTPUT -j BOGUS\nCOMMIT\n";
        let stderr = "iptables-restore v1.8.9 (nf_tables): line 3 failed";
        assert_eq!(
            failed_input_line(stderr, input),
            Some("-A ISTIO_OUTPUT -j BOGUS")
        );
        assert_eq!(failed_input_line("something else", input), None);
    }

    #[test]
    fn missing_programs_are_not_found_in_an_empty_path() {
        let empty = tempfile::tempdir().expect("temp dir");
        assert_eq!(
            find_program("surely-not-a-real-program", Some(empty.path().as_os_str())),
            None
        );
        let err = InitError::MissingProgram {
            program: "iptables-restore",
            package: "iptables",
        };
        assert_eq!(
            err.to_string(),
            "iptables-restore not found: install the iptables package"
        );
    }

    /// A directory with executable stand-ins for `programs`.
    fn fake_programs(programs: &[&str]) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        for program in programs {
            let path = dir.path().join(program);
            std::fs::write(&path, "#!/bin/sh\nexit 0\n").expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        dir
    }

    fn docs_config(ipv6: Ipv6Decision) -> CaptureConfig {
        let args = crate::init::InitArgs::try_parse_from([
            "-p", "15001", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b", "",
        ])
        .expect("flags parse");
        let mut cfg = CaptureConfig::from_args(&args, "1337").expect("valid");
        cfg.ipv6 = ipv6;
        cfg
    }

    #[test]
    fn a_global_ipv6_address_without_ip6tables_fails_closed() {
        // A host with iptables and ip, but no ip6tables.
        let dir = fake_programs(&["iptables", "iptables-save", "iptables-restore", "ip"]);
        let lookup = ProgramLookup::only(dir.path());
        let cfg = docs_config(Ipv6Decision::GlobalAddress {
            addr: "2001:db8::2".parse().expect("address"),
            interface: "eth0".into(),
        });
        let sets = crate::init::rule_sets(&cfg);
        assert_eq!(sets.len(), 2, "IPv4 and IPv6 rule sets");
        let msg = match locate_tools(&cfg, &sets, &lookup) {
            Ok(_) => panic!("init must refuse to leave IPv6 uncaptured"),
            Err(e) => e.to_string(),
        };
        for part in [
            "IPv6 must be captured (global address 2001:db8::2 on eth0)",
            "ip6tables-restore not found: install the iptables package",
            "refusing to leave IPv6 egress uncaptured",
        ] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }

        // Without a global address the same host is fine: nothing IPv6 is needed.
        let cfg = docs_config(Ipv6Decision::NoGlobalAddress);
        let sets = crate::init::rule_sets(&cfg);
        assert_eq!(sets.len(), 1);
        let tools = locate_tools(&cfg, &sets, &lookup)
            .unwrap_or_else(|e| panic!("IPv4-only capture needs no ip6tables: {e}"));
        assert_eq!(tools.iptables.len(), 1);
        assert!(tools.ip.is_empty());
    }

    #[test]
    fn ipv4_errors_are_not_blamed_on_ipv6() {
        let dir = fake_programs(&[]);
        let cfg = docs_config(Ipv6Decision::DualStackFlag);
        let sets = crate::init::rule_sets(&cfg);
        let msg = match locate_tools(&cfg, &sets, &ProgramLookup::only(dir.path())) {
            Ok(_) => panic!("no programs at all must fail"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            msg,
            "iptables-restore not found: install the iptables package"
        );
    }

    #[test]
    fn programs_are_found_in_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let program = dir.path().join("fake-iptables-restore");
        std::fs::write(&program, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(
            find_program("fake-iptables-restore", Some(dir.path().as_os_str())),
            Some(program)
        );
    }
}
