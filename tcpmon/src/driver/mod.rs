//! Sets each command up: opens the backend, makes it a source and the view
//! a consumer, and runs them on the run loop (`crate::run`) until the run
//! ends (end of capture, `q`, `--duration`, SIGINT or SIGTERM); then
//! reports what the backend could not read.

pub mod export;
mod live;
pub mod peek;
mod replay;
mod stat;
mod stat_live;

pub use stat::run_stat;

use std::io::Stdout;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use ratatui::backend::CrosstermBackend;

use crate::cli::TopArgs;
use crate::view::top::model::Purge;
use crate::view::top::view::{Mode, TopView};
use crate::view::top::{TopOptions, Tui};

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

/// The `top` view on the terminal and standard output. `follow`: the
/// screen follows the ticks (live, `--realtime`); `live`: what it no
/// longer shows leaves memory.
fn top_view(
    args: &TopArgs,
    follow: bool,
    live: bool,
) -> Result<TopView<CrosstermBackend<Stdout>, std::io::BufWriter<Stdout>>> {
    let mode = match output(args) {
        Output::Tui => Mode::Tui { follow },
        Output::Text => Mode::Text,
        Output::Json => Mode::Json,
    };
    let out = std::io::BufWriter::new(std::io::stdout());
    TopView::new(top_options(args)?, mode, live, Box::new(Tui::enter), out)
}

/// The run loop's runtime: one thread, as the work is one loop.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}
