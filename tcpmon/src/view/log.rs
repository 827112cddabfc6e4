//! `tcpmon log`: one JSON line per connection when it ends, `top --json`'s
//! object with `end` (why it ended) last, written as each line is complete
//! (line-buffered) to standard output or to a file that SIGHUP reopens, so
//! logrotate can move it away.

use std::fs::{File, OpenOptions};
use std::io::{LineWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::engine::FlowTable;
use crate::engine::ledger::{self, EndRules, Happened};
use crate::run::{Control, Input, Probe, Stop, View};
use crate::view::json;

/// Where the lines go.
pub enum Sink {
    Stdout(LineWriter<std::io::Stdout>),
    File {
        path: PathBuf,
        w: LineWriter<File>,
    },
    /// Tests read the lines back.
    Memory(Vec<u8>),
}

impl Sink {
    /// Standard output, or `path` opened for appending (created if
    /// missing).
    pub fn open(path: Option<&Path>) -> Result<Sink> {
        Ok(match path {
            None => Sink::Stdout(LineWriter::new(std::io::stdout())),
            Some(p) => Sink::File {
                path: p.to_path_buf(),
                w: LineWriter::new(append(p)?),
            },
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(w) => w,
            Sink::File { w, .. } => w,
            Sink::Memory(v) => v,
        }
    }

    /// What a `Memory` sink holds.
    pub fn memory(&self) -> &[u8] {
        match self {
            Sink::Memory(v) => v,
            _ => &[],
        }
    }
}

fn append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the log file {}", path.display()))
}

pub struct LogView {
    rules: EndRules,
    sweep: ledger::Sweep,
    sink: Sink,
    buf: Vec<u8>,
}

impl LogView {
    pub fn new(rules: EndRules, sink: Sink) -> LogView {
        LogView {
            rules,
            sweep: ledger::Sweep::default(),
            sink,
            buf: Vec::with_capacity(512),
        }
    }

    pub fn into_sink(self) -> Sink {
        self.sink
    }

    /// Writes the line of each connection that ended.
    fn write(
        &mut self,
        table: &mut FlowTable,
        now_ns: Option<u64>,
        probe: &dyn Probe,
    ) -> Result<()> {
        let offset = table.clock_offset_ns;
        let (buf, sink, sweep) = (&mut self.buf, &mut self.sink, &mut self.sweep);
        let mut failed = None;
        let mut line = |h: Happened| {
            if let Happened::Ended(c, end) = h
                && failed.is_none()
            {
                if ledger::backend_keeps(end) {
                    probe.forget(&c.key, &c.rec);
                }
                buf.clear();
                let r = json::ended_line(buf, offset, c, end.name()).and_then(|()| {
                    buf.push(b'\n');
                    sink.writer().write_all(buf)
                });
                if let Err(e) = r {
                    failed = Some(e);
                }
            }
        };
        match now_ns {
            Some(now) => ledger::tick(&self.rules, sweep, table, now, &mut line),
            None => ledger::stop(table, &mut line),
        }
        match failed {
            Some(e) => Err(anyhow::Error::from(e).context("cannot write the connection log")),
            None => Ok(()),
        }
    }
}

impl View for LogView {
    fn on(&mut self, input: Input, table: &mut FlowTable, probe: &dyn Probe) -> Result<Control> {
        match input {
            Input::Tick { now_ns } => self.write(table, Some(now_ns), probe)?,
            Input::Event(_) | Input::Key(_) | Input::Query { .. } => {}
            Input::Stop { why, .. } => {
                // A filter that cannot apply to the capture: nothing to log.
                if why != Stop::Invalid {
                    self.write(table, None, probe)?;
                }
                self.sink
                    .writer()
                    .flush()
                    .context("cannot write the connection log")?;
                return Ok(Control::Quit);
            }
        }
        Ok(Control::Continue)
    }

    /// Opens the file's path anew; lines written so far stay in the file
    /// that was moved. If the path cannot be opened, the old file is kept
    /// (and it is said on stderr).
    fn reopen(&mut self) -> Result<()> {
        if let Sink::File { path, w } = &mut self.sink {
            w.flush().context("cannot write the connection log")?;
            match append(path) {
                Ok(f) => *w = LineWriter::new(f),
                Err(e) => eprintln!("tcpmon: {e:#}; writing on to the file as it was"),
            }
        }
        Ok(())
    }
}
