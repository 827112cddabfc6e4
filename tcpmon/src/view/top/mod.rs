//! The `top` view: tcptrack's live, sorted connection table (ratatui).

pub mod app;
pub mod format;
pub mod model;
pub mod render;

use std::io::{self, Stdout};

use anyhow::{Context, Result};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};

use crate::engine::{FlowTable, Rates};
use app::{Action, App};
use model::{Extras, Purge, Row};
use render::Screen;

/// Options with tcptrack's meaning.
#[derive(Clone, Copy, Debug, Default)]
pub struct TopOptions {
    /// `-f`: speeds over a sliding window recomputed 10 times a second.
    pub fast: bool,
    /// `-d`: hide connections already open when tcpmon started.
    pub only_new: bool,
    pub purge: Purge,
    /// Extra columns asked for with `--columns`; key `c` toggles them.
    pub extras: Extras,
}

/// The terminal in raw mode on the alternate screen; restored on drop, also
/// when unwinding from a panic.
pub struct Tui {
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Tui {
    pub fn enter() -> Result<Tui> {
        enable_raw_mode().context("cannot put the terminal in raw mode (is stdout a terminal?)")?;
        execute!(io::stdout(), EnterAlternateScreen).context("cannot switch screens")?;
        let terminal = Terminal::new(CrosstermBackend::new(io::stdout()))
            .context("cannot open the terminal")?;
        Ok(Tui { terminal })
    }

    /// Draws `rows` (already chosen by the model) under the app's state.
    pub fn draw(&mut self, app: &mut App, rows: &[Row]) -> Result<()> {
        let page = render::page_len(self.terminal.size()?.height);
        app.clamp_scroll(rows.len(), page);
        self.terminal.draw(|f| {
            render::draw(
                f,
                &Screen {
                    rows,
                    paused: app.paused(),
                    sort: app.sort,
                    scroll: app.scroll,
                    help: app.help,
                    extras: app.extras(),
                },
            )
        })?;
        Ok(())
    }

    pub fn page(&self) -> usize {
        self.terminal
            .size()
            .map(|s| render::page_len(s.height))
            .unwrap_or(1)
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        let _ = disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen);
        let _ = self.terminal.show_cursor();
    }
}

/// After a replay: shows the final table, on packet time, until `q`. Only
/// key presses and resizes wake it up.
pub fn show_final(table: &FlowTable, rates: &Rates, now_ns: u64, opts: &TopOptions) -> Result<()> {
    // "A" marks connections with a packet in the last step before the end.
    let since = now_ns.saturating_sub(rates.step_ns());
    let live = model::rows(table, rates, now_ns, since, &opts.purge, opts.only_new);
    let mut tui = Tui::enter()?;
    let mut app = App::new(opts.extras);
    loop {
        let rows = app.visible(live.clone());
        tui.draw(&mut app, &rows)?;
        let ev = event::read().context("cannot read the keyboard")?;
        if app.on_event(&ev, &rows, tui.page()) == Action::Quit {
            return Ok(());
        }
    }
}

/// A replay at capture speed: the screen follows packet time as it goes.
pub struct Realtime {
    tui: Tui,
    app: App,
    /// Wall clock and packet time at the first step.
    origin: Option<(std::time::Instant, u64)>,
    last_ns: u64,
    rows: Vec<Row>,
}

impl Realtime {
    pub fn start(opts: &TopOptions) -> Result<Realtime> {
        Ok(Realtime {
            tui: Tui::enter()?,
            app: App::new(opts.extras),
            origin: None,
            last_ns: 0,
            rows: Vec::new(),
        })
    }

    /// Waits until packet time `now_ns` is due on the wall clock, handling
    /// keys meanwhile, then draws the table as of then. True when the user
    /// quit.
    pub fn show(
        &mut self,
        now_ns: u64,
        table: &FlowTable,
        rates: &Rates,
        opts: &TopOptions,
    ) -> bool {
        let (wall0, pkt0) = *self
            .origin
            .get_or_insert((std::time::Instant::now(), now_ns));
        let due = wall0 + std::time::Duration::from_nanos(now_ns.saturating_sub(pkt0));
        loop {
            let left = due.saturating_duration_since(std::time::Instant::now());
            match event::poll(left) {
                Ok(true) => {
                    let Ok(ev) = event::read() else { return true };
                    match self.app.on_event(&ev, &self.rows, self.tui.page()) {
                        Action::Quit => return true,
                        Action::Redraw => {
                            self.rows = self.app.visible(std::mem::take(&mut self.rows));
                            let _ = self.tui.draw(&mut self.app, &self.rows);
                        }
                        Action::Nothing => {}
                    }
                }
                Ok(false) => break,
                Err(_) => return true,
            }
        }
        let live = model::rows(
            table,
            rates,
            now_ns,
            self.last_ns,
            &opts.purge,
            opts.only_new,
        );
        self.last_ns = now_ns;
        self.rows = self.app.visible(live);
        self.tui.draw(&mut self.app, &self.rows).is_err()
    }
}

/// Reads terminal events on a thread of its own (crossterm's reads block)
/// and hands them to the async loop.
pub fn spawn_event_reader() -> tokio::sync::mpsc::UnboundedReceiver<Event> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while let Ok(ev) = event::read() {
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    rx
}
