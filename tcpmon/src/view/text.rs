//! A plain text table, printed every second until the `top` TUI exists.

use std::io::Write;

use crate::engine::FlowTable;

pub fn write_table(table: &FlowTable, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<46} {:<46} {:<12} {:>10} {:>12}",
        "Client", "Server", "State", "Packets", "Bytes"
    )?;
    for c in table.in_order() {
        let r = &c.rec;
        writeln!(
            out,
            "{:<46} {:<46} {:<12} {:>10} {:>12}",
            c.client().to_string(),
            c.server().to_string(),
            r.state.name(),
            r.packets[0] + r.packets[1],
            r.bytes[0] + r.bytes[1],
        )?;
    }
    writeln!(out)?;
    out.flush()
}
