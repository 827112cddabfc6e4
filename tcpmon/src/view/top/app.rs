//! The `top` view's interactive state and what each key does.

use ratatui::crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::engine::Connection;

use super::model::{self, At, Extras, Page, Shown, Sort, Source};

#[derive(Default)]
pub struct App {
    pub sort: Sort,
    /// The extra columns `c` shows: those of `--columns`, else all.
    extras: Extras,
    show_extras: bool,
    /// The time of the table on screen: set at each tick, kept for redraws
    /// between ticks (keys), so that they show the same moment.
    pub at: At,
    /// While paused, the connections as they were when `p` was pressed:
    /// copies, since the table goes on changing.
    frozen: Option<(Vec<(Connection, f64)>, At)>,
    /// `p` was pressed: the next redraw takes the copies.
    freeze: bool,
    pub scroll: usize,
    /// Rows in the table at the last redraw, for scrolling.
    total: usize,
    pub help: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    Redraw,
    Nothing,
}

impl App {
    /// `columns`: extra columns asked for on the command line (shown at once).
    pub fn new(columns: Extras) -> App {
        App {
            extras: if columns.any() { columns } else { Extras::ALL },
            show_extras: columns.any(),
            ..App::default()
        }
    }

    /// The extra columns to draw now.
    pub fn extras(&self) -> Extras {
        if self.show_extras {
            self.extras
        } else {
            Extras::default()
        }
    }

    pub fn paused(&self) -> bool {
        self.frozen.is_some() || self.freeze
    }

    /// The page to draw, `len` rows long: from the frozen copies while
    /// paused, else from `src` at `self.at`. Keeps the scroll position
    /// inside the table.
    pub fn page(&mut self, src: &Source, len: usize) -> Page {
        if std::mem::take(&mut self.freeze) {
            let copies = model::shown(src, self.at)
                .into_iter()
                .map(|s| (*s.conn, s.speed))
                .collect();
            self.frozen = Some((copies, self.at));
        }
        let (mut shown, at) = match &self.frozen {
            Some((copies, at)) => (copies.iter().map(|(c, s)| Shown::new(c, *s)).collect(), *at),
            None => (model::shown(src, self.at), self.at),
        };
        let page = model::page(&mut shown, at, self.sort, self.scroll, len);
        self.scroll = page.first;
        self.total = page.total;
        page
    }

    /// `page`: rows per screen.
    pub fn on_event(&mut self, ev: &Event, page: usize) -> Action {
        match ev {
            Event::Key(key) if key.kind != KeyEventKind::Release => self.on_key(key, page),
            Event::Resize(..) => Action::Redraw,
            _ => Action::Nothing,
        }
    }

    fn on_key(&mut self, key: &KeyEvent, page: usize) -> Action {
        let last = self.total.saturating_sub(page.max(1));
        match key.code {
            KeyCode::Char('q') | KeyCode::Char('Q') => return Action::Quit,
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                return Action::Quit;
            }
            KeyCode::Char('p') | KeyCode::Char('P') => {
                self.freeze = !self.paused();
                self.frozen = None;
            }
            KeyCode::Char('s') | KeyCode::Char('S') => self.sort = self.sort.next(),
            KeyCode::Char('c') => self.show_extras = !self.show_extras,
            KeyCode::Char('?') | KeyCode::Char('h') => self.help = !self.help,
            KeyCode::Esc => self.help = false,
            KeyCode::Down => self.scroll = (self.scroll + 1).min(last),
            KeyCode::Up => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::PageDown => self.scroll = (self.scroll + page).min(last),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(page),
            KeyCode::Home => self.scroll = 0,
            KeyCode::End => self.scroll = last,
            _ => return Action::Nothing,
        }
        Action::Redraw
    }
}
