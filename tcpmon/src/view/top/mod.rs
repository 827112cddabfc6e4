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
use model::{Purge, Row};
use render::Screen;

/// Options with tcptrack's meaning.
#[derive(Clone, Copy, Debug, Default)]
pub struct TopOptions {
    /// `-f`: speeds over a sliding window recomputed 10 times a second.
    pub fast: bool,
    /// `-d`: hide connections already open when tcpmon started.
    pub only_new: bool,
    pub purge: Purge,
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
    let mut app = App::default();
    loop {
        let rows = app.visible(live.clone());
        tui.draw(&mut app, &rows)?;
        let ev = event::read().context("cannot read the keyboard")?;
        if app.on_event(&ev, &rows, tui.page()) == Action::Quit {
            return Ok(());
        }
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
