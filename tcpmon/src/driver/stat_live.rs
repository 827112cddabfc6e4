//! `tcpmon stat -i IFACE`: the kernel's interval counters, on the clock.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::cli::stat::StatArgs;

pub(super) fn run(iface: &str, _args: &StatArgs) -> Result<ExitCode> {
    bail!("live statistics (-i {iface}) are not built yet; use -r FILE")
}
