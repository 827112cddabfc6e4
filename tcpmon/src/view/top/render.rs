//! Draws the table in tcptrack's layout: at 80 columns, Client at column 1,
//! Server 23, State 45, Idle 58, A 63, Speed 65; TOTAL and the status line
//! at the bottom. Wider terminals widen the address columns for IPv6.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

use super::format;
use super::model::{Extras, Row, Sort};

pub const MIN_WIDTH: u16 = 80;
pub const MIN_HEIGHT: u16 = 3;

/// Everything a frame shows.
pub struct Screen<'a> {
    pub rows: &'a [Row],
    pub paused: bool,
    pub sort: Sort,
    /// Index of the first row shown.
    pub scroll: usize,
    pub help: bool,
    /// Extra columns to show where the terminal has room.
    pub extras: Extras,
}

/// Width of the Speed column when extra columns follow it.
const SPEED_W: usize = 11;
const EXTRA_W: usize = 8;

/// Rows that fit between the header and the two footer lines.
pub fn page_len(height: u16) -> usize {
    height.saturating_sub(3) as usize
}

/// One page of a table: the rows on screen and what the footer and the
/// column widths need to know of the others.
pub struct PageScreen<'a> {
    /// The rows on screen, from row `scroll` of the table on.
    pub rows: &'a [Row],
    pub scroll: usize,
    /// Rows in the whole table.
    pub total: usize,
    pub total_speed: f64,
    /// The longest address in the whole table, plus 2.
    pub address_width: usize,
    pub paused: bool,
    pub sort: Sort,
    pub help: bool,
    pub extras: Extras,
    pub evicted: Evicted,
}

/// What the kernel's full flow maps evicted, for the footer: nothing shows
/// while both are 0, so that the footer stays tcptrack's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Flow records evicted (the kernel's count; most of them connections
    /// that had ended and were read in full).
    pub flows: u64,
    /// Connections shown whose counts an eviction cut.
    pub connections: u64,
}

/// Draws a whole table given as rows (scrolled to `s.scroll`).
pub fn draw(frame: &mut Frame, s: &Screen) {
    let page = page_len(frame.area().height);
    let scroll = s.scroll.min(s.rows.len());
    let end = (scroll + page).min(s.rows.len());
    draw_page(
        frame,
        &PageScreen {
            rows: &s.rows[scroll..end],
            scroll: s.scroll,
            total: s.rows.len(),
            total_speed: s.rows.iter().map(|r| r.speed).sum(),
            address_width: s
                .rows
                .iter()
                .map(|r| r.client.len().max(r.server.len()) + 2)
                .max()
                .unwrap_or(0),
            paused: s.paused,
            sort: s.sort,
            help: s.help,
            extras: s.extras,
            evicted: Evicted::default(),
        },
    );
}

pub fn draw_page(frame: &mut Frame, s: &PageScreen) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "tcpmon top needs a terminal of at least {MIN_WIDTH}x{MIN_HEIGHT}; this one is {}x{}",
            area.width, area.height
        );
        frame.render_widget(Paragraph::new(msg).wrap(Default::default()), area);
        return;
    }
    let w = area.width as usize;
    let extras = fitting_extras(s.extras, w);
    let extra_w = extra_width(extras);
    let aw = address_width(s.address_width, w - extra_w);
    let reverse = Style::default().add_modifier(Modifier::REVERSED);
    let mut lines = Vec::with_capacity(area.height as usize);
    let mut header = cells(aw, "Client", "Server", "State", "Idle", "A", "Speed");
    add_extras(&mut header, aw, extras, ["RTT", "Retr", "Bytes", "Pkts"]);
    lines.push(Line::styled(pad(&header, w), reverse));
    let page = page_len(area.height);
    let shown = &s.rows[..s.rows.len().min(page)];
    for r in shown {
        let client = if r.guessed {
            format!("~{}", r.client)
        } else {
            r.client.clone()
        };
        let mut line = cells(
            aw,
            &fit(&client, aw - 1),
            &fit(&r.server, aw - 1),
            r.state.name(),
            &format::idle(r.idle_ns),
            if r.active { "*" } else { " " },
            &format::speed(r.speed),
        );
        add_extras(
            &mut line,
            aw,
            extras,
            [
                &format::rtt(r.rtt_ns),
                &r.retransmits.to_string(),
                &format::amount(r.bytes),
                &format::amount(r.packets),
            ],
        );
        lines.push(Line::raw(pad(&line, w)));
    }
    while lines.len() < area.height as usize - 2 {
        lines.push(Line::raw(""));
    }
    let total = s.total_speed;
    let speed_col = speed_column(aw);
    lines.push(Line::styled(
        pad(
            &format!(
                " {:<w$}{}",
                fit(&total_label(s.evicted), speed_col - 2),
                format::speed(total),
                w = speed_col - 1
            ),
            w,
        ),
        reverse,
    ));
    lines.push(status_line(s, shown.len(), w));
    frame.render_widget(Paragraph::new(lines), area);
    if s.help {
        draw_help(frame, area);
    }
}

/// "TOTAL", and what the kernel's full flow maps evicted once they did:
/// the one place a live view shows that counts may be partial.
fn total_label(e: Evicted) -> String {
    match e {
        Evicted {
            flows: 0,
            connections: 0,
        } => "TOTAL".to_string(),
        Evicted {
            flows,
            connections: 0,
        } => format!("TOTAL   {flows} flows evicted"),
        Evicted { flows, connections } => {
            format!("TOTAL   {flows} flows evicted ({connections} connections cut)")
        }
    }
}

/// " Connections a-b of n", then Paused/Unpaused and the sort mode, with the
/// key letters (p, s) underlined as tcptrack does.
fn status_line(s: &PageScreen, shown: usize, w: usize) -> Line<'static> {
    let n = s.total;
    let range = if shown == 0 {
        format!("Connections 0-0 of {n}")
    } else {
        format!("Connections {}-{} of {n}", s.scroll + 1, s.scroll + shown)
    };
    let pause = if s.paused { "Paused" } else { "Unpaused" };
    let text = pad(&format!(" {range:<45}{pause:<10}{}", s.sort.label()), w);
    let pause_key = 46 + if s.paused { 0 } else { 2 };
    let sort_key = 56 + if s.sort == Sort::Unsorted { 2 } else { 0 };
    let reverse = Style::default().add_modifier(Modifier::REVERSED);
    let key = reverse.add_modifier(Modifier::UNDERLINED);
    let piece = |a: usize, b: usize| text.get(a..b).unwrap_or("").to_string();
    Line::from(vec![
        Span::styled(piece(0, pause_key), reverse),
        Span::styled(piece(pause_key, pause_key + 1), key),
        Span::styled(piece(pause_key + 1, sort_key), reverse),
        Span::styled(piece(sort_key, sort_key + 1), key),
        Span::styled(piece(sort_key + 1, text.len()), reverse),
    ])
}

fn draw_help(frame: &mut Frame, area: Rect) {
    let text = [
        "q       quit",
        "p       pause the display (tracking goes on)",
        "s       sort: unsorted, by rate, by bytes",
        "c       extra columns: RTT, retransmits, bytes, packets",
        "Up/Down PgUp/PgDn Home/End  scroll",
        "?       this help",
        "",
        "~ before a client: no handshake seen, the client",
        "  is guessed (the side with the higher port)",
        "A: * when a packet arrived since the last redraw",
    ];
    // Sized to its longest line and the border, so no line is cut where
    // the terminal has room (80 columns always do).
    let h = (text.len() as u16 + 2).min(area.height);
    let widest = text.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let w = (widest as u16 + 2).min(area.width);
    let rect = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(text.join("\n")).block(Block::bordered().title(" tcpmon top: keys ")),
        rect,
    );
}

/// The extra columns that fit beside tcptrack's columns at their narrowest.
fn fitting_extras(wanted: Extras, w: usize) -> Extras {
    let mut e = wanted;
    let mut room = w.saturating_sub(1 + 2 * 22 + 20 + SPEED_W);
    for flag in [&mut e.rtt, &mut e.retransmits, &mut e.bytes, &mut e.packets] {
        if *flag {
            *flag = room >= EXTRA_W;
            room = room.saturating_sub(EXTRA_W);
        }
    }
    e
}

fn extra_width(e: Extras) -> usize {
    let n = [e.rtt, e.retransmits, e.bytes, e.packets]
        .iter()
        .filter(|x| **x)
        .count();
    if n == 0 { 0 } else { SPEED_W - 1 + n * EXTRA_W }
}

/// Appends the enabled extra cells after the Speed cell, right-aligned.
fn add_extras(line: &mut String, aw: usize, e: Extras, values: [&str; 4]) {
    if !e.any() {
        return;
    }
    let end_of_speed = speed_column(aw) + SPEED_W;
    line.push_str(&" ".repeat(end_of_speed.saturating_sub(line.len())));
    for (on, v) in [e.rtt, e.retransmits, e.bytes, e.packets]
        .into_iter()
        .zip(values)
    {
        if on {
            line.push_str(&format!("{v:>w$}", w = EXTRA_W - 1));
            line.push(' ');
        }
    }
}

/// Address columns are 22 wide as in tcptrack, wider when the terminal has
/// room and an address (`longest`, plus 2) needs it.
fn address_width(longest: usize, w: usize) -> usize {
    let room = (w.saturating_sub(36) / 2).max(22);
    longest.clamp(22, room)
}

/// Where the Speed column starts: 65 at tcptrack's widths.
fn speed_column(aw: usize) -> usize {
    1 + 2 * aw + 20
}

fn cells(aw: usize, c: &str, s: &str, state: &str, idle: &str, a: &str, speed: &str) -> String {
    format!(" {c:<aw$}{s:<aw$}{state:<13}{idle:<5}{a:<2}{speed}")
}

fn fit(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn pad(s: &str, w: usize) -> String {
    format!("{s:<w$}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use tcpmon_common::{FlowKey, State};

    fn row(client: &str, server: &str, state: State, idle_s: u64, speed: f64, bytes: u64) -> Row {
        Row {
            id: (FlowKey::default(), bytes),
            client: client.into(),
            server: server.into(),
            state,
            guessed: false,
            idle_ns: idle_s * 1_000_000_000,
            active: false,
            speed,
            bytes,
            packets: bytes / 100,
            rtt_ns: Some(1_500_000),
            retransmits: 2,
        }
    }

    fn screen(rows: &[Row], w: u16, h: u16, f: impl Fn(&mut Screen)) -> Vec<String> {
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        let mut s = Screen {
            rows,
            paused: false,
            sort: Sort::Unsorted,
            scroll: 0,
            help: false,
            extras: Extras::default(),
        };
        f(&mut s);
        term.draw(|fr| draw(fr, &s)).unwrap();
        let buf = term.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .map(|l| l.trim_end().to_string())
            .collect()
    }

    fn sample() -> Vec<Row> {
        let mut a = row(
            "10.0.0.2:40000",
            "10.0.0.1:80",
            State::Established,
            2,
            2048.0,
            100,
        );
        a.active = true;
        let b = row(
            "10.0.0.3:50000",
            "10.0.0.1:443",
            State::SynSent,
            75,
            0.0,
            900,
        );
        let mut c = row("10.0.0.4:1234", "10.0.0.1:22", State::Reset, 7200, 5e6, 50);
        c.guessed = true;
        vec![a, b, c]
    }

    #[test]
    fn tcptrack_columns_and_footer_at_80x8() {
        let lines = screen(&sample(), 80, 8, |_| {});
        assert_eq!(
            lines,
            [
                " Client                Server                State        Idle A Speed",
                " 10.0.0.2:40000        10.0.0.1:80           ESTABLISHED  2s   * 2 KB/s",
                " 10.0.0.3:50000        10.0.0.1:443          SYN_SENT     1m     0 B/s",
                " ~10.0.0.4:1234        10.0.0.1:22           RESET        2h     4 MB/s",
                "",
                "",
                " TOTAL                                                           4 MB/s",
                " Connections 1-3 of 3                         Unpaused  Unsorted",
            ]
        );
    }

    #[test]
    fn the_footer_says_what_the_full_flow_maps_evicted() {
        let rows = sample();
        let total = |evicted: Evicted| {
            let mut term = Terminal::new(TestBackend::new(80, 5)).unwrap();
            let s = PageScreen {
                rows: &rows[..2],
                scroll: 0,
                total: 3,
                total_speed: 2048.0,
                address_width: 16,
                paused: false,
                sort: Sort::Unsorted,
                help: false,
                extras: Extras::default(),
                evicted,
            };
            term.draw(|fr| draw_page(fr, &s)).unwrap();
            let buf = term.backend().buffer().clone();
            (0..80)
                .map(|x| buf[(x, 3)].symbol().to_string())
                .collect::<String>()
                .trim_end()
                .to_string()
        };
        assert_eq!(
            total(Evicted::default()),
            " TOTAL                                                           2 KB/s",
            "tcptrack's while nothing was evicted"
        );
        assert_eq!(
            total(Evicted {
                flows: 1234,
                connections: 0
            }),
            " TOTAL   1234 flows evicted                                      2 KB/s"
        );
        assert_eq!(
            total(Evicted {
                flows: 1234,
                connections: 5
            }),
            " TOTAL   1234 flows evicted (5 connections cut)                  2 KB/s"
        );
        // A count too long for its room is cut, never the speed.
        assert_eq!(
            total(Evicted {
                flows: u64::MAX,
                connections: u64::MAX
            }),
            " TOTAL   18446744073709551615 flows evicted (1844674407370955161 2 KB/s"
        );
    }

    #[test]
    fn header_and_status_are_reversed_and_keys_underlined() {
        let rows = sample();
        let mut term = Terminal::new(TestBackend::new(80, 5)).unwrap();
        let s = Screen {
            rows: &rows,
            paused: false,
            sort: Sort::Unsorted,
            scroll: 0,
            help: false,
            extras: Extras::default(),
        };
        term.draw(|fr| draw(fr, &s)).unwrap();
        let buf = term.backend().buffer();
        assert!(buf[(1, 0)].modifier.contains(Modifier::REVERSED));
        assert!(!buf[(1, 1)].modifier.contains(Modifier::REVERSED));
        // "Unpaused": the p at column 48; "Unsorted": the s at column 58.
        assert_eq!(buf[(48, 4)].symbol(), "p");
        assert!(buf[(48, 4)].modifier.contains(Modifier::UNDERLINED));
        assert_eq!(buf[(58, 4)].symbol(), "s");
        assert!(buf[(58, 4)].modifier.contains(Modifier::UNDERLINED));
        assert!(!buf[(47, 4)].modifier.contains(Modifier::UNDERLINED));
    }

    #[test]
    fn sort_orders_and_labels() {
        let mut rows = sample();
        Sort::Rate.apply(&mut rows);
        let lines = screen(&rows, 80, 6, |s| s.sort = Sort::Rate);
        assert!(lines[1].starts_with(" ~10.0.0.4:1234"), "{lines:?}");
        assert!(lines[2].starts_with(" 10.0.0.2:40000"));
        assert_eq!(
            lines[5],
            " Connections 1-3 of 3                         Unpaused  Sorted by rate"
        );
        let mut rows = sample();
        Sort::Bytes.apply(&mut rows);
        let lines = screen(&rows, 80, 6, |s| s.sort = Sort::Bytes);
        assert!(lines[1].starts_with(" 10.0.0.3:50000"), "{lines:?}");
        assert!(lines[5].ends_with("Unpaused  Sorted by bytes"));
    }

    #[test]
    fn equal_rates_put_the_least_idle_first() {
        let mut rows = vec![
            row("a:1", "b:1", State::Established, 9, 100.0, 1),
            row("c:1", "d:1", State::Established, 3, 100.0, 2),
        ];
        Sort::Rate.apply(&mut rows);
        assert_eq!(rows[0].client, "c:1");
    }

    #[test]
    fn paused_and_scrolled() {
        let rows = sample();
        let lines = screen(&rows, 80, 5, |s| {
            s.paused = true;
            s.scroll = 1;
        });
        assert!(lines[1].starts_with(" 10.0.0.3:50000"), "{lines:?}");
        assert!(lines[2].starts_with(" ~10.0.0.4:1234"));
        assert_eq!(
            lines[4],
            " Connections 2-3 of 3                         Paused    Unsorted"
        );
    }

    #[test]
    fn an_empty_table() {
        let lines = screen(&[], 80, 3, |_| {});
        assert_eq!(
            lines[1],
            " TOTAL                                                           0 B/s"
        );
        assert_eq!(
            lines[2],
            " Connections 0-0 of 0                         Unpaused  Unsorted"
        );
    }

    #[test]
    fn ipv6_widens_the_address_columns_when_there_is_room() {
        let rows = vec![row(
            "[2001:db8::1]:40000",
            "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:1]:443",
            State::Established,
            0,
            0.0,
            0,
        )];
        let lines = screen(&rows, 140, 4, |_| {});
        assert!(
            lines[1].contains(" [2001:db8:aaaa:bbbb:cccc:dddd:eeee:1]:443 "),
            "{lines:?}"
        );
        let state_col = lines[0].find("State").unwrap();
        assert_eq!(lines[1].find("ESTABLISHED").unwrap(), state_col);
        // At 80 columns the long address is cut to its column.
        let lines = screen(&rows, 80, 4, |_| {});
        assert_eq!(lines[1].find("ESTABLISHED"), Some(45));
    }

    #[test]
    fn extra_columns_follow_speed_where_they_fit() {
        let rows = sample();
        let lines = screen(&rows, 120, 6, |s| s.extras = Extras::ALL);
        assert_eq!(
            lines[0],
            " Client                Server                State        Idle A Speed          RTT    Retr   Bytes    Pkts"
        );
        assert_eq!(
            lines[2],
            " 10.0.0.3:50000        10.0.0.1:443          SYN_SENT     1m     0 B/s       1500us       2     900       9"
        );
        // At 80 columns there is no room: tcptrack's layout stays.
        let narrow = screen(&rows, 80, 6, |s| s.extras = Extras::ALL);
        assert_eq!(narrow, screen(&rows, 80, 6, |_| {}));
        // Room for two of them.
        let mid = screen(&rows, 96, 6, |s| s.extras = Extras::ALL);
        assert!(mid[0].ends_with("RTT    Retr"), "{mid:?}");
    }

    #[test]
    fn a_small_terminal_gets_a_message() {
        let lines = screen(&sample(), 60, 10, |_| {});
        assert!(lines.join(" ").contains("at least 80x3"), "{lines:?}");
        let lines = screen(&sample(), 100, 2, |_| {});
        assert!(lines.join(" ").contains("this one is 100x2"), "{lines:?}");
    }

    #[test]
    fn help_overlay_lists_the_keys() {
        let lines = screen(&sample(), 80, 16, |s| s.help = true);
        let all = lines.join("\n");
        assert!(all.contains("p       pause"), "{all}");
        assert!(all.contains("~ before a client"));
        // Every line whole, the longest included.
        assert!(
            all.contains("c       extra columns: RTT, retransmits, bytes, packets"),
            "{all}"
        );
        assert!(all.contains("A: * when a packet arrived since the last redraw"));
    }
}
