//! `tcpmon generate`, hidden: the man pages and shell completions, made
//! from the command line's own definitions so they never drift from it
//! (`cargo xtask package` puts them in the Debian package).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Subcommand};
use clap_complete::Shell;

use super::Cli;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(subcommand)]
    what: Generate,
}

#[derive(Subcommand, Debug)]
enum Generate {
    /// tcpmon.8 and tcpmon-SUBCOMMAND.8 for every visible subcommand, into DIR.
    Man { dir: PathBuf },
    /// The completion script for SHELL, on standard output.
    Completions { shell: Shell },
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    match &args.what {
        Generate::Man { dir } => man_pages(dir),
        Generate::Completions { shell } => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(*shell, &mut Cli::command(), "tcpmon", &mut out);
            out.flush().context("cannot write to standard output")
        }
    }
}

/// Section 8: tcpmon loads kernel programs, a system administrator's tool.
fn man_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Cli::command();
    write_page(dir, "tcpmon", cmd.clone())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("tcpmon-{}", sub.get_name());
        write_page(dir, &name, sub.clone().name(name.clone()))?;
    }
    Ok(())
}

fn write_page(dir: &Path, name: &str, cmd: clap::Command) -> Result<()> {
    let path = dir.join(format!("{name}.8"));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd)
        .section("8")
        .render(&mut page)
        .with_context(|| format!("rendering {name}(8)"))?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))
}
