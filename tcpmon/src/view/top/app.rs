//! The `top` view's interactive state and what each key does.

use ratatui::crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::model::{Extras, Row, Sort};

#[derive(Default)]
pub struct App {
    pub sort: Sort,
    /// The extra columns `c` shows: those of `--columns`, else all.
    extras: Extras,
    show_extras: bool,
    /// While paused, the rows as they were when `p` was pressed.
    pub frozen: Option<Vec<Row>>,
    pub scroll: usize,
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
        self.frozen.is_some()
    }

    /// The rows to draw: the frozen ones while paused, else `live`, sorted.
    pub fn visible(&self, mut live: Vec<Row>) -> Vec<Row> {
        let mut rows = self
            .frozen
            .clone()
            .unwrap_or_else(|| std::mem::take(&mut live));
        self.sort.apply(&mut rows);
        rows
    }

    /// `current`: the rows on screen now; `page`: rows per screen.
    pub fn on_event(&mut self, ev: &Event, current: &[Row], page: usize) -> Action {
        match ev {
            Event::Key(key) if key.kind != KeyEventKind::Release => self.on_key(key, current, page),
            Event::Resize(..) => Action::Redraw,
            _ => Action::Nothing,
        }
    }

    fn on_key(&mut self, key: &KeyEvent, current: &[Row], page: usize) -> Action {
        let last = current.len().saturating_sub(page.max(1));
        match key.code {
            KeyCode::Char('q') | KeyCode::Char('Q') => return Action::Quit,
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                return Action::Quit;
            }
            KeyCode::Char('p') | KeyCode::Char('P') => {
                self.frozen = match self.frozen {
                    Some(_) => None,
                    None => Some(current.to_vec()),
                };
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

    /// Keeps the scroll position inside the table after it shrank.
    pub fn clamp_scroll(&mut self, rows: usize, page: usize) {
        self.scroll = self.scroll.min(rows.saturating_sub(page.max(1)));
    }
}
