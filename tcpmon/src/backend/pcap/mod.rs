//! Capture files.
pub mod file;
pub mod replay;
pub mod write;

pub use replay::{Replay, ReplayStats, Replayer, Step};
