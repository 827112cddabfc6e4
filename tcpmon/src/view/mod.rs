//! Ways of showing the flow table.

pub mod json;
pub mod log;
pub mod metrics;
pub mod peek;
pub mod stat;
pub mod text;
pub mod top;
