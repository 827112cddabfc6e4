//! The one way a run stops on a signal: tokio's handlers, turned into
//! inputs by the run loop. Installing them keeps the default action (exit)
//! away for the whole run, so a signal always ends it in order: the view
//! still prints what it has.

use anyhow::{Context, Result};
use tokio::signal::unix::{Signal, SignalKind, signal};

pub struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    /// Must be called inside the tokio runtime.
    pub fn new() -> Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    /// The next SIGINT or SIGTERM. Cancel-safe.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}
