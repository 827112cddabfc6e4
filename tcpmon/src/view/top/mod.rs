//! The `top` view: tcptrack's live, sorted connection table (ratatui).

pub mod app;
pub mod format;
pub mod model;
pub mod render;
pub mod view;

use std::io::{self, Stdout};

use anyhow::{Context, Result};
use ratatui::Terminal;
use ratatui::backend::{Backend, CrosstermBackend};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};

use crate::engine::{FlowTable, Rates};
use app::App;
use model::{Extras, Purge, Source};
use render::{Evicted, PageScreen};

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
    /// Where the table's rows come from; `flows_evicted` as the backend
    /// counts them.
    pub fn source<'a>(
        &self,
        table: &'a FlowTable,
        rates: &'a Rates,
        flows_evicted: u64,
    ) -> Source<'a> {
        Source {
            table,
            rates,
            purge: self.purge,
            only_new: self.only_new,
            flows_evicted,
        }
    }
}

/// The screen: the terminal in raw mode on the alternate screen, restored
/// on drop (also when unwinding from a panic); or, in tests, ratatui's
/// `TestBackend`.
pub struct Tui<B: Backend = CrosstermBackend<Stdout>> {
    pub terminal: Terminal<B>,
    /// A real terminal, to give back as it was.
    restore: bool,
}

impl Tui {
    pub fn enter() -> Result<Tui> {
        enable_raw_mode().context("cannot put the terminal in raw mode (is stdout a terminal?)")?;
        execute!(io::stdout(), EnterAlternateScreen).context("cannot switch screens")?;
        let terminal = Terminal::new(CrosstermBackend::new(io::stdout()))
            .context("cannot open the terminal")?;
        Ok(Tui {
            terminal,
            restore: true,
        })
    }
}

impl<B: Backend> Tui<B> {
    /// A screen on `backend` that leaves no terminal to restore.
    pub fn headless(backend: B) -> Result<Tui<B>> {
        let terminal = Terminal::new(backend).context("cannot open the terminal")?;
        Ok(Tui {
            terminal,
            restore: false,
        })
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
                    evicted: Evicted {
                        flows: src.flows_evicted,
                        connections: src.table.evicted,
                    },
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

impl<B: Backend> Drop for Tui<B> {
    fn drop(&mut self) {
        if self.restore {
            let _ = disable_raw_mode();
            let _ = execute!(io::stdout(), LeaveAlternateScreen);
            let _ = self.terminal.show_cursor();
        }
    }
}
