//! The real terminal as a source of keys.

use ratatui::crossterm::event::{self, Event};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// Reads terminal events on a thread of its own (crossterm's reads block)
/// and hands them to the run loop. The channel closes when the terminal
/// can no longer be read.
pub fn spawn_reader() -> UnboundedReceiver<Event> {
    let (tx, rx) = unbounded_channel();
    std::thread::spawn(move || {
        while let Ok(ev) = event::read() {
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    rx
}
