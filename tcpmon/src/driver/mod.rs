//! Connects a backend to the flow table until the run ends (end of capture,
//! `--duration`, SIGINT or SIGTERM), then hands the table to a view.

mod live;
mod replay;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::cli::TopArgs;
use crate::engine::FlowTable;
use crate::view;

pub fn run_top(args: &TopArgs) -> Result<ExitCode> {
    if !args.filter.is_empty() {
        bail!(
            "filter expressions are not supported yet (got {:?}); run without one",
            args.filter.join(" ")
        );
    }
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
