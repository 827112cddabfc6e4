//! tcpeek's filters: `name:DIR@rule[,rule...]`, rule `addr[/bits]:port[:port...]`.
//!
//! - DIR is `RX` (the SYN came in: its destination is a local address and the
//!   rule's address matches its source) or `TX` (the SYN went out: its
//!   source is local and the rule matches its destination). The ports are
//!   always the server's.
//! - `*` or `%` is a wildcard for the address or a port. IPv6 addresses go
//!   in brackets, `[2001:db8::]/32:443`, since their colons would otherwise
//!   run into the ports.
//! - An empty name makes an exclusion filter: a session it matches is
//!   counted by no filter at all, wherever the exclusion is written.
//! - A session counts once per filter, however many of its rules match.
//!
//! tcpeek's `/0` behaved as `/32`; here `/0` matches every address.

use std::fmt;
use std::net::IpAddr;

/// The filters tcpeek uses when none is given.
pub const DEFAULT_FILTERS: [&str; 2] = ["RX:RX@*:*", "TX:TX@*:*"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Rx,
    Tx,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    /// Network and prefix length; `None` is the wildcard.
    net: Option<(IpAddr, u8)>,
    /// `None` is the wildcard.
    ports: Option<Vec<u16>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Empty for an exclusion filter.
    pub name: String,
    pub dir: Dir,
    rules: Vec<Rule>,
}

/// A finished session as filters see it.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    pub client: IpAddr,
    pub server: IpAddr,
    pub server_port: u16,
    /// The SYN came in to a local address.
    pub rx: bool,
    /// The SYN went out from a local address.
    pub tx: bool,
}

impl Filter {
    fn matches(&self, s: &Seen) -> bool {
        let (local, remote) = match self.dir {
            Dir::Rx => (s.rx, s.client),
            Dir::Tx => (s.tx, s.server),
        };
        local
            && self.rules.iter().any(|r| {
                r.net.is_none_or(|(net, bits)| in_prefix(remote, net, bits))
                    && r.ports
                        .as_ref()
                        .is_none_or(|ports| ports.contains(&s.server_port))
            })
    }
}

fn in_prefix(addr: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - bits as u32).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - bits as u32).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Every filter of a run, named ones in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filters {
    named: Vec<Filter>,
    exclusions: Vec<Filter>,
}

impl Filters {
    /// Parses the filter arguments; with no named filter, tcpeek's defaults
    /// `RX:RX@*:*` and `TX:TX@*:*` are added (exclusions still apply).
    pub fn parse<S: AsRef<str>>(exprs: &[S]) -> Result<Filters, FilterError> {
        let mut f = Filters {
            named: Vec::new(),
            exclusions: Vec::new(),
        };
        for e in exprs {
            let filter = parse_filter(e.as_ref())?;
            if filter.name.is_empty() {
                f.exclusions.push(filter);
            } else if f.named.iter().any(|n| n.name == filter.name) {
                let e = e.as_ref();
                let name_len = filter.name.len();
                return Err(FilterError::new(
                    e,
                    0,
                    name_len,
                    "a filter of this name was given before",
                ));
            } else {
                f.named.push(filter);
            }
        }
        if f.named.is_empty() {
            for d in DEFAULT_FILTERS {
                f.named
                    .push(parse_filter(d).expect("the default filters parse"));
            }
        }
        Ok(f)
    }

    /// The named filters' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.named.iter().map(|f| f.name.as_str())
    }

    /// Indexes (into `names`) of the filters that count this session, each
    /// once; none when an exclusion filter matches.
    pub fn matching(&self, s: &Seen) -> Vec<usize> {
        if self.exclusions.iter().any(|f| f.matches(s)) {
            return Vec::new();
        }
        (0..self.named.len())
            .filter(|&i| self.named[i].matches(s))
            .collect()
    }
}

/// A malformed filter: the whole expression, and which part is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct FilterError {
    pub expr: String,
    /// Byte offset and length of the bad part.
    pub start: usize,
    pub len: usize,
    pub msg: String,
}

impl FilterError {
    fn new(expr: &str, start: usize, len: usize, msg: impl Into<String>) -> FilterError {
        FilterError {
            expr: expr.to_string(),
            start,
            len,
            msg: msg.into(),
        }
    }
}

impl fmt::Display for FilterError {
    /// The message, then the expression with the bad part underlined.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pad = self.expr[..self.start.min(self.expr.len())].chars().count();
        let width = self.expr[self.start.min(self.expr.len())..]
            .chars()
            .take_while({
                let mut bytes = 0;
                move |c| {
                    bytes += c.len_utf8();
                    bytes <= self.len
                }
            })
            .count()
            .max(1);
        write!(
            f,
            "bad filter {:?}: {} (the form is name:RX|TX@addr[/bits]:port[:port...][,...])\n  {}\n  {}{}",
            self.expr,
            self.msg,
            self.expr,
            " ".repeat(pad),
            "^".repeat(width)
        )
    }
}

fn parse_filter(e: &str) -> Result<Filter, FilterError> {
    let err = |start: usize, len: usize, msg: &str| Err(FilterError::new(e, start, len, msg));
    let Some(colon) = e.find(':') else {
        return err(0, e.len(), "no ':' after the filter name");
    };
    let name = &e[..colon];
    let rest = colon + 1;
    let Some(at) = e[rest..].find('@').map(|i| rest + i) else {
        return err(
            rest,
            e.len() - rest,
            "no '@' after the direction (RX or TX)",
        );
    };
    let dir = match &e[rest..at] {
        "RX" | "rx" => Dir::Rx,
        "TX" | "tx" => Dir::Tx,
        _ => return err(rest, at - rest, "the direction must be RX or TX"),
    };
    let mut rules = Vec::new();
    let mut start = at + 1;
    for part in e[at + 1..].split(',') {
        rules.push(parse_rule(e, start, part)?);
        start += part.len() + 1;
    }
    Ok(Filter {
        name: name.to_string(),
        dir,
        rules,
    })
}

/// One `addr[/bits]:port[:port...]`; `start` is its offset in `e`.
fn parse_rule(e: &str, start: usize, rule: &str) -> Result<Rule, FilterError> {
    let err = |from: usize, len: usize, msg: &str| Err(FilterError::new(e, start + from, len, msg));
    if rule.is_empty() {
        return err(0, 0, "empty rule: expected addr[/bits]:port");
    }
    // The address part ends at the first ':' after a closing bracket.
    let addr_end = if rule.starts_with('[') {
        match rule.find(']') {
            Some(close) => rule[close..].find(':').map(|i| close + i),
            None => return err(0, rule.len(), "'[' without a closing ']'"),
        }
    } else {
        rule.find(':')
    };
    let Some(addr_end) = addr_end else {
        return err(0, rule.len(), "missing ':port' (use ':*' for any port)");
    };
    // An IPv6 address without brackets runs into the ports: "::", or a
    // part after the first colon that is hex but not a number.
    let unbracketed_v6 = !rule.starts_with('[')
        && (rule.contains("::")
            || rule.split(':').skip(1).any(|p| {
                p.chars().all(|c| c.is_ascii_hexdigit())
                    && p.chars().any(|c| c.is_ascii_alphabetic())
            }));
    if unbracketed_v6 {
        return err(
            0,
            rule.len(),
            "an IPv6 address must be in brackets, e.g. [2001:db8::1]:80",
        );
    }
    let addr = &rule[..addr_end];
    let net = parse_addr(addr).map_err(|msg| FilterError::new(e, start, addr.len(), msg))?;
    let mut ports = Some(Vec::new());
    let mut off = addr_end + 1;
    for p in rule[addr_end + 1..].split(':') {
        match p {
            "*" | "%" => ports = None,
            _ => match p.parse::<u16>() {
                Ok(n) if !p.starts_with('+') => {
                    if let Some(v) = ports.as_mut() {
                        v.push(n);
                    }
                }
                _ => {
                    return err(
                        off,
                        p.len(),
                        "a port must be a number from 0 to 65535, or * or %",
                    );
                }
            },
        }
        off += p.len() + 1;
    }
    Ok(Rule { net, ports })
}

/// `*`, `%`, an IPv4 address or a bracketed IPv6 one, with an optional
/// `/bits` (inside or after the brackets).
fn parse_addr(a: &str) -> Result<Option<(IpAddr, u8)>, String> {
    if a == "*" || a == "%" {
        return Ok(None);
    }
    if a.is_empty() {
        return Err("missing address (use * for any)".into());
    }
    let (ip, bits) = if let Some(inner) = a.strip_prefix('[') {
        let close = inner.find(']').ok_or("'[' without a closing ']'")?;
        let (body, after) = (&inner[..close], &inner[close + 1..]);
        match (body.split_once('/'), after.strip_prefix('/')) {
            (Some(_), Some(_)) => return Err("two prefix lengths".into()),
            (Some((ip, bits)), None) if after.is_empty() => (ip, Some(bits)),
            (None, Some(bits)) => (body, Some(bits)),
            (None, None) if after.is_empty() => (body, None),
            _ => return Err(format!("unexpected {after:?} after ']'")),
        }
    } else {
        match a.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (a, None),
        }
    };
    let addr: IpAddr = match ip.parse() {
        Ok(IpAddr::V6(_)) if !a.starts_with('[') => {
            return Err("an IPv6 address must be in brackets, e.g. [2001:db8::1]:80".into());
        }
        Ok(addr) => addr,
        Err(_)
            if !a.starts_with('[')
                && ip.contains(|c: char| c.is_ascii_hexdigit() && !c.is_ascii_digit()) =>
        {
            return Err(format!(
                "{ip:?} is not an IPv4 address (IPv6 addresses go in brackets, e.g. [2001:db8::1]:80)"
            ));
        }
        Err(_) => return Err(format!("{ip:?} is not an IP address")),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        None => max,
        Some(b) => match b.parse::<u8>() {
            Ok(n) if n <= max && !b.starts_with('+') => n,
            _ => {
                return Err(format!(
                    "prefix length {b:?} is not a number from 0 to {max}"
                ));
            }
        },
    };
    Ok(Some((addr, bits)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(client: &str, server: &str, port: u16, rx: bool, tx: bool) -> Seen {
        Seen {
            client: client.parse().unwrap(),
            server: server.parse().unwrap(),
            server_port: port,
            rx,
            tx,
        }
    }

    fn matching(filters: &[&str], s: &Seen) -> Vec<String> {
        let f = Filters::parse(filters).unwrap();
        let names: Vec<&str> = f.names().collect();
        f.matching(s)
            .into_iter()
            .map(|i| names[i].to_string())
            .collect()
    }

    #[test]
    fn accepted_forms() {
        for e in [
            "RX:RX@*:*",
            "web:RX@%:80:443",
            "lan:TX@192.168.0.0/24:%",
            "multi:RX@192.168.0.1:80:443:8080,192.168.0.2:80,192.168.0.3:80:8080",
            "v6:RX@[2001:db8::1]:80",
            "v6net:TX@[2001:db8::]/32:443",
            "v6net2:TX@[2001:db8::/32]:*",
            "all:TX@0.0.0.0/0:*",
            ":RX@*:22",
            "lower:rx@*:1",
        ] {
            Filters::parse(&[e]).unwrap_or_else(|err| panic!("{e}: {err}"));
        }
    }

    #[test]
    fn rejected_forms_point_at_the_bad_part() {
        for (e, bad, words) in [
            ("web", "web", "no ':'"),
            ("web:RX", "RX", "no '@'"),
            ("web:XX@*:80", "XX", "RX or TX"),
            ("web:RX@*", "*", "missing ':port'"),
            ("web:RX@10.0.0.300:80", "10.0.0.300", "not an IP"),
            ("web:RX@10.0.0.1/33:80", "10.0.0.1/33", "prefix length"),
            ("web:RX@*:80:http", "http", "port must be"),
            ("web:RX@*:70000", "70000", "port must be"),
            ("web:RX@*:80,", "", "empty rule"),
            ("web:RX@2001:db8::1:80", "2001:db8::1:80", "brackets"),
            ("web:RX@fe80::1/64:*", "fe80::1/64:*", "brackets"),
            ("web:RX@[2001:db8::1:80", "[2001:db8::1:80", "closing"),
            (
                "web:RX@[2001:db8::1]/129:80",
                "[2001:db8::1]/129",
                "prefix length",
            ),
        ] {
            let err = Filters::parse(&[e]).expect_err(e);
            assert_eq!(&e[err.start..err.start + err.len], bad, "{e}: {err}");
            let text = err.to_string();
            assert!(text.contains(words), "{e}: {text}");
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines[1], format!("  {e}"));
            assert_eq!(lines[2].find('^'), Some(2 + err.start), "{e}: {text}");
        }
        let err = Filters::parse(&["a:RX@*:*", "a:TX@*:*"]).unwrap_err();
        assert!(err.msg.contains("before"));
    }

    #[test]
    fn rx_matches_the_client_tx_the_server_ports_are_the_servers() {
        let incoming = seen("192.168.0.7", "10.0.0.1", 80, true, false);
        let outgoing = seen("10.0.0.1", "192.168.0.7", 443, false, true);
        let f = [
            "in:RX@192.168.0.0/24:80",
            "out:TX@192.168.0.0/24:443",
            "tx80:TX@*:80",
        ];
        assert_eq!(matching(&f, &incoming), ["in"]);
        assert_eq!(matching(&f, &outgoing), ["out"]);
        assert_eq!(
            matching(&["in:RX@192.168.1.0/24:80"], &incoming),
            Vec::<String>::new()
        );
        assert_eq!(matching(&["in:RX@*:8080"], &incoming), Vec::<String>::new());
        // Neither end local: no direction matches.
        assert!(matching(&[], &seen("1.1.1.1", "2.2.2.2", 80, false, false)).is_empty());
        assert_eq!(matching(&[], &incoming), ["RX"]);
        assert_eq!(matching(&[], &outgoing), ["TX"]);
        let v6 = seen("2001:db8:1::5", "fd00::1", 443, true, false);
        assert_eq!(
            matching(&["a:RX@[2001:db8::]/32:443", "b:RX@10.0.0.0/8:*"], &v6),
            ["a"]
        );
        assert_eq!(matching(&["all:RX@0.0.0.0/0:*"], &incoming), ["all"]);
    }

    #[test]
    fn exclusions_win_wherever_they_are_written() {
        let ssh = seen("192.168.0.7", "10.0.0.1", 22, true, false);
        let web = seen("192.168.0.7", "10.0.0.1", 80, true, false);
        for f in [[":RX@*:22", "all:RX@*:*"], ["all:RX@*:*", ":RX@*:22"]] {
            assert!(matching(&f, &ssh).is_empty());
            assert_eq!(matching(&f, &web), ["all"]);
        }
        // Only exclusions given: the defaults count the rest.
        assert_eq!(matching(&[":RX@*:22"], &web), ["RX"]);
        assert!(matching(&[":RX@*:22"], &ssh).is_empty());
    }

    #[test]
    fn overlapping_rules_count_a_session_once() {
        let s = seen("192.168.0.7", "10.0.0.1", 80, true, false);
        let f =
            Filters::parse(&["x:RX@192.168.0.7:80:80,192.168.0.0/24:80,*:*", "y:RX@*:80"]).unwrap();
        assert_eq!(f.matching(&s), [0, 1]);
    }
}
