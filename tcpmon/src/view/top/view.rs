//! The `top` view as a consumer of the run loop's inputs, the same for
//! live and replay: rates sampled on each tick (clock or packet time), the
//! screen redrawn when it follows the ticks, keys, and what to show when
//! the run ends.

use std::io::Write;

use anyhow::{Context, Result};
use ratatui::backend::Backend;

use super::app::{Action, App};
use super::model::At;
use super::{TopOptions, Tui};
use crate::engine::{FlowTable, Rates};
use crate::run::{Control, Input, Probe, Stop, View};
use crate::view;

/// How the view shows its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The interactive table. `follow`: the screen is up from the start and
    /// redrawn on each tick (live, `--realtime`); else it comes up when the
    /// run ends, on the final table (a replay).
    Tui { follow: bool },
    /// A text table at each tick and when the run ends (standard output is
    /// no terminal).
    Text,
    /// `--json`: JSON lines when the run ends.
    Json,
}

/// Opens the screen when the view needs it.
pub type OpenScreen<B> = Box<dyn FnMut() -> Result<Tui<B>>>;

/// How often the live table drops what the screen no longer shows.
const FORGET_EVERY_NS: u64 = 10_000_000_000;

pub struct TopView<B: Backend, W: Write> {
    opts: TopOptions,
    mode: Mode,
    /// Live: what the screen no longer shows leaves memory too, so a long
    /// run's stays bounded. A replay keeps all, so the same file always
    /// gives the same table.
    forget: bool,
    rates: Rates,
    open: OpenScreen<B>,
    screen: Option<(Tui<B>, App)>,
    last_redraw_ns: u64,
    /// When `forget` last dropped what the screen no longer shows.
    last_forget_ns: u64,
    /// The final table is up; only keys remain.
    final_shown: bool,
    /// The backend's count of flows its full maps evicted, as of the last
    /// tick (the footer's).
    flows_evicted: u64,
    out: W,
}

impl<B: Backend, W: Write> TopView<B, W> {
    /// With `Mode::Tui { follow: true }` the screen opens now. `out`:
    /// where text and JSON go.
    pub fn new(
        opts: TopOptions,
        mode: Mode,
        forget: bool,
        mut open: OpenScreen<B>,
        out: W,
    ) -> Result<Self> {
        let screen = match mode {
            Mode::Tui { follow: true } => Some((open()?, App::new(opts.extras))),
            _ => None,
        };
        Ok(TopView {
            opts,
            mode,
            forget,
            rates: Rates::new(opts.fast),
            open,
            screen,
            last_redraw_ns: 0,
            last_forget_ns: 0,
            final_shown: false,
            flows_evicted: 0,
            out,
        })
    }

    /// Time between ticks the view wants, for the source.
    pub fn step_ns(&self) -> u64 {
        self.rates.step_ns()
    }

    /// Where text and JSON went, for tests to read back.
    pub fn into_out(self) -> W {
        self.out
    }

    /// The screen, for tests to read back.
    pub fn screen(&self) -> Option<&Tui<B>> {
        self.screen.as_ref().map(|(tui, _)| tui)
    }

    /// The table as of `now_ns`: "A" marks connections with a packet
    /// since `since_ns`. Rows are built for the page on screen only.
    fn redraw(&mut self, table: &FlowTable, now_ns: u64, since_ns: u64) -> Result<()> {
        if let Some((_, app)) = &mut self.screen {
            app.at = At { now_ns, since_ns };
        }
        self.show(table)
    }

    /// Draws the page the app's state selects, at the app's time.
    fn show(&mut self, table: &FlowTable) -> Result<()> {
        if let Some((tui, app)) = &mut self.screen {
            let src = self.opts.source(table, &self.rates, self.flows_evicted);
            tui.draw(app, &src)?;
        }
        Ok(())
    }

    fn on_tick(&mut self, table: &mut FlowTable, now_ns: u64) -> Result<()> {
        self.rates.sample(table);
        match self.mode {
            Mode::Tui { .. } if self.screen.is_some() && !self.final_shown => {
                // Every few seconds, not every tick: each drop rebuilds the
                // table's index, and after a flood connections leave the
                // screen a few every tick. A redraw skips them meanwhile.
                if self.forget && now_ns.saturating_sub(self.last_forget_ns) >= FORGET_EVERY_NS {
                    let purge = self.opts.purge;
                    table.retain(|c| purge.keeps(c, now_ns));
                    self.last_forget_ns = now_ns;
                }
                let since = self.last_redraw_ns;
                self.last_redraw_ns = now_ns;
                self.redraw(table, now_ns, since)
            }
            Mode::Text => view::text::write_table(table, &mut self.out)
                .and_then(|()| self.out.flush())
                .context("cannot write to standard output"),
            _ => Ok(()),
        }
    }

    fn on_key(
        &mut self,
        ev: &ratatui::crossterm::event::Event,
        table: &FlowTable,
    ) -> Result<Control> {
        let Some((tui, app)) = &mut self.screen else {
            return Ok(Control::Continue);
        };
        match app.on_event(ev, tui.page()) {
            Action::Quit => return Ok(Control::Quit),
            Action::Redraw => self.show(table)?,
            Action::Nothing => {}
        }
        Ok(Control::Continue)
    }

    /// The final table on the source's time, until `q`. A fresh app state,
    /// as a replay's end always had.
    fn show_final(&mut self, table: &FlowTable, now_ns: u64) -> Result<Control> {
        if self.final_shown {
            return Ok(Control::Quit);
        }
        self.final_shown = true;
        let tui = match self.screen.take() {
            Some((tui, _)) => tui,
            None => (self.open)()?,
        };
        self.screen = Some((tui, App::new(self.opts.extras)));
        // "A" marks connections with a packet in the last step before the end.
        let since = now_ns.saturating_sub(self.rates.step_ns());
        self.redraw(table, now_ns, since)?;
        Ok(Control::Continue)
    }

    fn on_stop(&mut self, table: &FlowTable, why: Stop, now_ns: u64) -> Result<Control> {
        // A filter that cannot apply to the capture makes the table
        // meaningless, as tcpdump would not have started.
        if why == Stop::Invalid {
            return Ok(Control::Quit);
        }
        match self.mode {
            Mode::Json => view::json::write_connections(table, &mut self.out),
            Mode::Text => view::text::write_table(table, &mut self.out),
            // The end of a replay, or SIGINT during one, shows the table;
            // stopping a screen that follows the ticks (`q` in real time,
            // live) just ends.
            Mode::Tui { follow } => {
                return match why == Stop::End || !follow {
                    true => self.show_final(table, now_ns),
                    false => Ok(Control::Quit),
                };
            }
        }
        .and_then(|()| self.out.flush())
        .context("cannot write to standard output")?;
        Ok(Control::Quit)
    }
}

impl<B: Backend, W: Write> View for TopView<B, W> {
    fn on(&mut self, input: Input, table: &mut FlowTable, probe: &dyn Probe) -> Result<Control> {
        if matches!(input, Input::Tick { .. } | Input::Stop { .. }) {
            // A failed read keeps the last count: the footer is no error.
            if let Ok(n) = probe.flows_evicted() {
                self.flows_evicted = n;
            }
        }
        match input {
            // The table took the event in; rows come from the table.
            Input::Event(_) | Input::Query { .. } => Ok(Control::Continue),
            Input::Tick { now_ns } => self.on_tick(table, now_ns).map(|()| Control::Continue),
            Input::Key(ev) => self.on_key(&ev, table),
            Input::Stop { why, now_ns } => self.on_stop(table, why, now_ns),
        }
    }

    fn wants_keys(&self) -> bool {
        self.screen.is_some()
    }
}
