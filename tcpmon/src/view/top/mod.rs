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
use model::{At, Extras, Purge, Source};
use render::PageScreen;

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

impl TopOptions {
    /// Where the table's rows come from.
    pub fn source<'a>(&self, table: &'a FlowTable, rates: &'a Rates) -> Source<'a> {
        Source {
            table,
            rates,
            purge: self.purge,
            only_new: self.only_new,
        }
    }
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

    /// Draws the page of `src` the app's state selects, at `app.at`.
    pub fn draw(&mut self, app: &mut App, src: &Source) -> Result<()> {
        let page = app.page(src, render::page_len(self.terminal.size()?.height));
        self.terminal.draw(|f| {
            render::draw_page(
                f,
                &PageScreen {
                    rows: &page.rows,
                    scroll: page.first,
                    total: page.total,
                    total_speed: page.total_speed,
                    address_width: page.address_width,
                    paused: app.paused(),
                    sort: app.sort,
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
    let src = opts.source(table, rates);
    let mut tui = Tui::enter()?;
    let mut app = App::new(opts.extras);
    // "A" marks connections with a packet in the last step before the end.
    app.at = At {
        now_ns,
        since_ns: now_ns.saturating_sub(rates.step_ns()),
    };
    loop {
        tui.draw(&mut app, &src)?;
        let ev = event::read().context("cannot read the keyboard")?;
        if app.on_event(&ev, tui.page()) == Action::Quit {
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
}

impl Realtime {
    pub fn start(opts: &TopOptions) -> Result<Realtime> {
        Ok(Realtime {
            tui: Tui::enter()?,
            app: App::new(opts.extras),
            origin: None,
            last_ns: 0,
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
        let src = opts.source(table, rates);
        let (wall0, pkt0) = *self
            .origin
            .get_or_insert((std::time::Instant::now(), now_ns));
        let due = wall0 + std::time::Duration::from_nanos(now_ns.saturating_sub(pkt0));
        loop {
            let left = due.saturating_duration_since(std::time::Instant::now());
            match event::poll(left) {
                Ok(true) => {
                    let Ok(ev) = event::read() else { return true };
                    match self.app.on_event(&ev, self.tui.page()) {
                        Action::Quit => return true,
                        Action::Redraw => {
                            let _ = self.tui.draw(&mut self.app, &src);
                        }
                        Action::Nothing => {}
                    }
                }
                Ok(false) => break,
                Err(_) => return true,
            }
        }
        self.app.at = At {
            now_ns,
            since_ns: self.last_ns,
        };
        self.last_ns = now_ns;
        self.tui.draw(&mut self.app, &src).is_err()
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
