//! The soak's verdict: memory held steady, every connection accounted for
//! by peek and by export, the soak's own count agreeing with the kernel's.

use std::sync::atomic::Ordering;

use anyhow::{Result, bail};

use super::traffic::Counts;
use super::{Outcome, RSS_TOLERANCE};
use crate::util::metric_sum;

pub struct Final<'a> {
    pub counts: &'a Counts,
    pub flood_sent: u64,
    /// ActiveOpens in the client's namespace over the soak.
    pub active_opens: u64,
    /// The soak's scrapes of export over the same time: connections on the
    /// client's loopback, in ActiveOpens but not the soak's traffic.
    pub scrapes: u64,
    pub peek: serde_json::Value,
    pub export: String,
}

/// What a watcher says of the handshakes: ended ones and pending, and its
/// losses.
struct Accounting {
    reported: u64,
    lost: u64,
    detail: String,
}

impl Final<'_> {
    pub fn print(&self, o: &mut Outcome) -> Result<()> {
        let c = self.counts;
        let syns = c.syns.load(Ordering::SeqCst);
        let expected = syns + self.flood_sent;
        println!("\n== soak: {} ==", crate::util::human(o.elapsed));
        println!(
            "the soak's connections: {syns} ({} connected, {} failed, {} bulk with {:.1} GB), \
             flood SYNs {}; expected sessions {expected}",
            c.connected.load(Ordering::SeqCst),
            c.failed.load(Ordering::SeqCst),
            c.bulk_connections.load(Ordering::SeqCst),
            c.bulk_bytes.load(Ordering::SeqCst) as f64 / 1e9,
            self.flood_sent
        );
        let kernel = self.active_opens.saturating_sub(self.scrapes);
        if kernel != syns {
            o.failures.push(format!(
                "the kernel counted {kernel} active opens besides the scrapes, the soak {syns}"
            ));
        }
        println!(
            "kernel ActiveOpens (client namespace): {} ({} of them scrapes of export)",
            self.active_opens, self.scrapes
        );
        for (name, a) in [
            ("peek", self.peek_accounting()),
            ("export", self.export_accounting()),
        ] {
            let ok = a.reported <= expected && expected <= a.reported + a.lost;
            println!(
                "{name}: reported {} + lost {} for {expected} expected ({}): {}",
                a.reported,
                a.lost,
                a.detail,
                if ok { "all accounted for" } else { "MISMATCH" }
            );
            if !ok {
                o.failures.push(format!(
                    "{name} reported {} and lost {} of {expected} sessions",
                    a.reported, a.lost
                ));
            }
        }
        rss(o);
        if o.failures.is_empty() {
            println!("soak passed");
            Ok(())
        } else {
            bail!("soak failed:\n  {}", o.failures.join("\n  "))
        }
    }

    fn peek_accounting(&self) -> Accounting {
        let items = self.peek.as_array().cloned().unwrap_or_default();
        let (mut ended, mut stats) = (0, serde_json::Value::Null);
        for item in items.iter().filter_map(|i| i.as_object()) {
            for (name, v) in item {
                match name.as_str() {
                    "pcap" => stats = v["stats"].clone(),
                    _ => {
                        ended += v["success"]["total"].as_u64().unwrap_or(0)
                            + v["failure"]["total"].as_u64().unwrap_or(0)
                    }
                }
            }
        }
        let n = |k: &str| stats[k].as_u64().unwrap_or(0);
        Accounting {
            reported: ended + n("pending"),
            lost: n("events_lost") + n("sessions_dropped"),
            detail: format!(
                "{ended} ended, {} pending, {} events lost, {} sessions dropped",
                n("pending"),
                n("events_lost"),
                n("sessions_dropped")
            ),
        }
    }

    fn export_accounting(&self) -> Accounting {
        let m = |name: &str| metric_sum(&self.export, name) as u64;
        let ended = m("tcpmon_handshakes_total");
        let pending = m("tcpmon_handshakes_pending");
        let (events, dropped, evicted) = (
            m("tcpmon_events_lost_total"),
            m("tcpmon_sessions_dropped_total"),
            m("tcpmon_flows_evicted_total"),
        );
        Accounting {
            reported: ended + pending,
            lost: events + dropped + evicted,
            detail: format!(
                "{ended} ended, {pending} pending, {events} events lost, {dropped} sessions \
                 dropped, {evicted} flows evicted"
            ),
        }
    }
}

/// Each watcher's RSS over the last half against its RSS at half time
/// (the sample at the first full minute past it).
fn rss(o: &mut Outcome) {
    let n = o.samples.len();
    if n < 2 {
        o.failures
            .push(format!("{n} samples: too few to compare halves"));
        return;
    }
    let half = n.div_ceil(2) - 1;
    for (k, name) in o.names.iter().enumerate() {
        let at_half = o.samples[half][k].rss_kib as f64;
        let worst = o.samples[half + 1..]
            .iter()
            .map(|s| (s[k].rss_kib as f64 - at_half) / at_half)
            .fold(0.0f64, |w, d| if d.abs() > w.abs() { d } else { w });
        let last = o.samples[n - 1][k].rss_kib as f64;
        let ok = worst.abs() <= RSS_TOLERANCE;
        println!(
            "{name}: RSS {:.1} MB at half time (minute {}), {:.1} MB at the end, worst {:+.1}% in \
             the last half: {}",
            at_half / 1024.0,
            half + 1,
            last / 1024.0,
            worst * 100.0,
            if ok { "steady" } else { "DRIFTED" }
        );
        if !ok {
            o.failures.push(format!(
                "{name}'s RSS moved {:+.1}% from half time",
                worst * 100.0
            ));
        }
    }
}
