//! Connects a backend to the flow table until the run ends (end of capture,
//! `--duration`, SIGINT or SIGTERM), then hands the table to a view.

mod live;
pub mod peek;
mod replay;
mod stat;
mod stat_live;

pub use stat::run_stat;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::cli::TopArgs;
use crate::engine::FlowTable;
use crate::view;
use crate::view::top::TopOptions;
use crate::view::top::model::Purge;

/// How a `top` run shows its table.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    /// `--json`: JSON lines when the run ends.
    Json,
    /// The interactive table.
    Tui,
    /// Standard output is no terminal: a text table.
    Text,
}

fn output(args: &TopArgs) -> Output {
    use std::io::IsTerminal;
    if args.json {
        Output::Json
    } else if std::io::stdout().is_terminal() {
        Output::Tui
    } else {
        Output::Text
    }
}

fn top_options(args: &TopArgs) -> Result<TopOptions> {
    let secs = |what: &str, v: f64| -> Result<u64> {
        if !v.is_finite() || v < 0.0 {
            bail!("{what} must be a number of seconds, not {v}");
        }
        Ok((v * 1e9) as u64)
    };
    Ok(TopOptions {
        extras: args.columns.unwrap_or_default(),
        fast: args.fast,
        only_new: args.only_new,
        purge: Purge {
            closed_ns: secs("-r", args.linger)?,
            established_ns: args
                .idle_timeout
                .map(|v| secs("--idle-timeout", v))
                .transpose()?,
        },
    })
}

pub fn run_top(args: &TopArgs) -> Result<ExitCode> {
    match (&args.source.read, &args.source.interface) {
        (Some(path), _) => replay::top(path, args),
        (None, Some(iface)) => live::top(iface, args),
        (None, None) => bail!(
            "nothing to watch: give -i IFACE to watch an interface live, or -T FILE to replay a capture"
        ),
    }
}

pub(crate) fn print_table(table: &FlowTable, args: &TopArgs) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.json {
        view::json::write_connections(table, &mut out)
    } else {
        view::text::write_table(table, &mut out)
    }
    .context("cannot write to standard output")?;
    out.flush().context("cannot write to standard output")
}
