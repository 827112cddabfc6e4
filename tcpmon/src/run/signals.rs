//! The one way a run stops on a signal: tokio's handlers, turned into
//! inputs by the run loop. Installing them keeps the default action (exit)
//! away for the whole run, so a signal always ends it in order: the view
//! still prints what it has.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};

/// What a signal asks of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT or SIGTERM.
    Stop,
    /// SIGUSR1 (`stat`): report what is counted so far.
    Report,
    /// SIGHUP (`log -w`): reopen the output file (logrotate moved it).
    Reopen,
}

pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    usr1: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// SIGINT and SIGTERM. Must be called inside the tokio runtime.
    pub fn new() -> Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            usr1: None,
            hup: None,
        })
    }

    /// SIGUSR1 as well.
    pub fn with_report() -> Result<Signals> {
        let mut s = Signals::new()?;
        s.usr1 = Some(signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?);
        Ok(s)
    }

    /// SIGHUP as well, for views that reopen their file on it (handled,
    /// it no longer kills the process, whatever the view).
    pub fn with_reopen() -> Result<Signals> {
        let mut s = Signals::new()?;
        s.hup = Some(signal(SignalKind::hangup()).context("cannot handle SIGHUP")?);
        Ok(s)
    }

    /// The next signal. Cancel-safe.
    pub async fn recv(&mut self) -> Signal {
        let usr1 = async {
            match &mut self.usr1 {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let hup = async {
            match &mut self.hup {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.int.recv() => Signal::Stop,
            _ = self.term.recv() => Signal::Stop,
            _ = usr1 => Signal::Report,
            _ = hup => Signal::Reopen,
        }
    }
}

/// A flag raised on SIGINT or SIGTERM by a task on a runtime worker, for
/// loops that cannot wait for the run loop: `stat`'s padding over a long
/// gap, which may be billions of lines. Needs a multi-thread runtime.
pub fn watch_interrupts() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let raised = flag.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        raised.store(true, Ordering::Relaxed);
    });
    Ok(flag)
}
