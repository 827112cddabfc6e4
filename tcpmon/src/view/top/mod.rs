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

use app::App;
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

impl<B: Backend> Drop for Tui<B> {
    fn drop(&mut self) {
        if self.restore {
            let _ = disable_raw_mode();
            let _ = execute!(io::stdout(), LeaveAlternateScreen);
            let _ = self.terminal.show_cursor();
        }
    }
}
