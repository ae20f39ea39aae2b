//! `sluice completion SHELL` and `sluice man`: the shell completion script and the manual pages,
//! generated from the clap definition of the command line itself (clap_complete, clap_mangen), so
//! they can never list a flag the binary does not take.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Options of `sluice completion`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Install:
  bash:  sluice completion bash > ~/.local/share/bash-completion/completions/sluice
  zsh:   sluice completion zsh > \"${fpath[1]}/_sluice\"
  fish:  sluice completion fish > ~/.config/fish/completions/sluice.fish")]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Options of `sluice man`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Read it:  sluice man | man -l -
Install:  sluice man --dir /usr/local/share/man/man1 && mandb")]
pub struct ManArgs {
    /// Write one page per command (sluice.1, sluice-sidecar.1, sluice-ca-init.1, …) into this
    /// directory instead of printing every page on stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Writes the completion script for `shell` to `out`.
pub fn completion(mut cli: clap::Command, shell: clap_complete::Shell, out: &mut dyn Write) {
    let name = cli.get_name().to_string();
    clap_complete::generate(shell, &mut cli, name, out);
}

/// Every manual page of the command line: the top command's first, then each visible
/// subcommand's (depth first), as (file name, roff text).
pub fn man_pages(cli: clap::Command) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    // `sluice help` is clap's own; every page already documents its command's --help.
    let mut cli = cli.disable_help_subcommand(true);
    // Building names each subcommand's page after its parents (sluice-ca-init).
    cli.build();
    let mut pages = Vec::new();
    collect(cli, &mut pages)?;
    Ok(pages)
}

fn collect(cmd: clap::Command, pages: &mut Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
    let subcommands: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    let man = clap_mangen::Man::new(cmd).manual("sluice manual");
    let mut roff = Vec::new();
    man.render(&mut roff)
        .context("cannot render the manual page")?;
    pages.push((man.get_filename(), ascii_roff(&roff)));
    for sub in subcommands {
        collect(sub, pages)?;
    }
    Ok(())
}

/// `roff` with every non-ASCII character (the help texts' →, …, ✔) as a groff special
/// character `\[uXXXX]`, so any formatter renders it, not only one fed through preconv.
fn ascii_roff(roff: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(roff);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("\\[u{:04X}]", u32::from(c)));
        }
    }
    out.into_bytes()
}

/// Runs `sluice man`: every page on stdout, or one file per page in `--dir`.
pub fn man(cli: clap::Command, args: &ManArgs) -> anyhow::Result<()> {
    let pages = man_pages(cli)?;
    match &args.dir {
        None => {
            let mut out = std::io::stdout().lock();
            for (_, roff) in &pages {
                write_out(&mut out, roff)?;
            }
            Ok(())
        }
        Some(dir) => write_pages(dir, &pages),
    }
}

fn write_pages(dir: &Path, pages: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut out = std::io::stdout().lock();
    for (name, roff) in pages {
        let path = dir.join(name);
        std::fs::write(&path, roff).with_context(|| format!("cannot write {}", path.display()))?;
        write_out(&mut out, format!("{}\n", path.display()).as_bytes())?;
    }
    Ok(())
}

/// Writes to stdout; a reader that went away (`| head`) ends the output quietly.
fn write_out(out: &mut dyn Write, bytes: &[u8]) -> anyhow::Result<()> {
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

/// Runs `sluice completion`.
pub fn run_completion(cli: clap::Command, args: &CompletionArgs) -> anyhow::Result<()> {
    let mut script = Vec::new();
    completion(cli, args.shell, &mut script);
    write_out(&mut std::io::stdout().lock(), &script)
}
