//! Filter expressions in tcpdump's language, with libpcap's exact meaning.
//!
//! libpcap compiles the expression into classic BPF for a link type (see
//! `libpcap`). In user space `tcpmon_common::cbpf` interprets that program
//! on captured frames, as tcpdump does; for live packets `translate` turns
//! it into eBPF, which the loader puts before the kernel programs. No parser
//! of our own, so every expression tcpdump takes means exactly what it means
//! there.
//!
//! libpcap's programs for a link type expect the frame as it was on the
//! wire: for Ethernet, VLAN tags in the bytes (a handle from
//! `pcap_open_dead` never uses the Linux "VLAN tag in metadata" extension
//! loads). The translation for TC reads a tag the hook holds in skb metadata
//! where it was on the wire, so `vlan` means the same live and in replays.

mod libpcap;
pub mod translate;

use tcpmon_common::cbpf::{self, Captured, Insn};

pub use libpcap::{ENV_LIBPCAP, INSTALL_HINT};

use crate::backend::pcap::file::linktype_name;

/// LINKTYPE_ETHERNET: what live capture compiles for, and what tells an
/// error in the expression from a link type it cannot apply to.
pub const LINKTYPE_ETHERNET: u32 = 1;

#[derive(Debug, Clone, thiserror::Error)]
pub enum FilterError {
    #[error(
        "filter expressions are compiled by libpcap, which could not be loaded ({}: {reason}); \
         {INSTALL_HINT}", tried.join(", ")
    )]
    NoLibpcap { tried: Vec<String>, reason: String },
    /// The expression itself is wrong: libpcap's words, as tcpdump prints
    /// them (`can't parse filter expression: syntax error`).
    #[error("{0}")]
    Expression(String),
    #[error("the filter expression cannot apply to link type {name} ({linktype}): {message}")]
    LinkType {
        linktype: u32,
        name: &'static str,
        message: String,
    },
    #[error(
        "the filter expression compiles to {len} classic BPF instructions; tcpmon runs at most \
         {max}: simplify it"
    )]
    TooLong { len: usize, max: usize },
    #[error("libpcap produced a program tcpmon cannot run ({0:?})")]
    Invalid(cbpf::Invalid),
}

/// How the frames to filter were captured: libpcap compiles some
/// primitives differently for files than for live interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Live, by the kernel programs (Ethernet framing).
    Live,
    /// A capture file written in this byte order.
    File { big_endian: bool },
}

/// An expression compiled for one link type.
pub struct Filter {
    linktype: u32,
    source: Source,
    insns: Vec<Insn>,
}

impl Filter {
    /// Compiles `expr` for live Ethernet frames, for the kernel programs.
    pub fn compile(expr: &str) -> Result<Filter, FilterError> {
        Filter::compile_for(expr, LINKTYPE_ETHERNET, Source::Live)
    }

    /// Compiles `expr` for frames of `linktype` (a LINKTYPE_* value, as in
    /// capture files) from `source`.
    pub fn compile_for(expr: &str, linktype: u32, source: Source) -> Result<Filter, FilterError> {
        let target = |linktype: u32| match source {
            Source::Live => libpcap::Target::Live { dlt: dlt(linktype) },
            Source::File { big_endian } => libpcap::Target::File {
                linktype,
                big_endian,
            },
        };
        let insns = match libpcap::compile(expr, target(linktype)) {
            Ok(insns) => insns,
            Err(libpcap::CompileError::NotLoaded(e)) => {
                return Err(FilterError::NoLibpcap {
                    tried: e.tried,
                    reason: e.reason,
                });
            }
            Err(libpcap::CompileError::Pcap(message)) => {
                // The same words for Ethernet mean the expression is wrong
                // anywhere; otherwise it is this link type that lacks what
                // the expression asks for (`vlan` on raw IP).
                let anywhere = linktype == LINKTYPE_ETHERNET
                    || matches!(
                        libpcap::compile(expr, target(LINKTYPE_ETHERNET)),
                        Err(libpcap::CompileError::Pcap(m)) if m == message
                    );
                return Err(if anywhere {
                    FilterError::Expression(message)
                } else {
                    FilterError::LinkType {
                        linktype,
                        name: linktype_name(linktype),
                        message,
                    }
                });
            }
        };
        if insns.len() > cbpf::MAX_INSNS {
            return Err(FilterError::TooLong {
                len: insns.len(),
                max: cbpf::MAX_INSNS,
            });
        }
        cbpf::validate(&insns).map_err(FilterError::Invalid)?;
        Ok(Filter {
            linktype,
            source,
            insns,
        })
    }

    /// Whether the frame passes: `data` are the captured bytes, `wire_len`
    /// its length on the wire (what `len`, `greater` and `less` test).
    pub fn matches(&self, data: &[u8], wire_len: u32) -> bool {
        cbpf::run(&self.insns, &Captured { data, wire_len }) != 0
    }

    /// `matches` by libpcap's own interpreter (`bpf_filter`), which tests
    /// hold tcpmon's interpreter and translation to.
    pub fn libpcap_matches(&self, data: &[u8], wire_len: u32) -> Result<bool, FilterError> {
        libpcap::bpf_filter(&self.insns, data, wire_len)
            .map(|v| v != 0)
            .map_err(|e| FilterError::NoLibpcap {
                tried: e.tried,
                reason: e.reason,
            })
    }

    pub fn linktype(&self) -> u32 {
        self.linktype
    }

    pub fn source(&self) -> Source {
        self.source
    }

    pub fn insns(&self) -> &[Insn] {
        &self.insns
    }
}

/// The filter words of a command line as one expression, joined with
/// spaces as tcpdump joins its arguments; `None` without words.
pub fn expression(words: &[String]) -> Option<String> {
    let expr = words.join(" ");
    (!expr.trim().is_empty()).then_some(expr)
}

/// One expression for frames of any link type, compiled for each link type
/// on its first frame (a pcapng file may mix them).
pub struct Filters {
    expr: String,
    source: Source,
    compiled: Vec<Filter>,
}

impl Filters {
    /// Checks the expression at once (compiled for Ethernet), so an error
    /// in it is reported before any capture is read.
    pub fn new(expr: &str, source: Source) -> Result<Filters, FilterError> {
        let first = Filter::compile_for(expr, LINKTYPE_ETHERNET, source);
        let compiled = match first {
            Ok(f) => vec![f],
            // An expression for another link type only (rare, e.g. `ip` on a
            // capture whose Ethernet part is not asked about) is checked
            // when that link type's first frame arrives.
            Err(FilterError::LinkType { .. }) => vec![],
            Err(e) => return Err(e),
        };
        Ok(Filters {
            expr: expr.to_string(),
            source,
            compiled,
        })
    }

    pub fn expression(&self) -> &str {
        &self.expr
    }

    /// Whether a frame of `linktype` passes.
    pub fn matches(
        &mut self,
        linktype: u32,
        data: &[u8],
        wire_len: u32,
    ) -> Result<bool, FilterError> {
        let i = match self.compiled.iter().position(|f| f.linktype == linktype) {
            Some(i) => i,
            None => {
                self.compiled
                    .push(Filter::compile_for(&self.expr, linktype, self.source)?);
                self.compiled.len() - 1
            }
        };
        Ok(self.compiled[i].matches(data, wire_len))
    }
}

/// The DLT_* value libpcap's `pcap_open_dead` takes for a LINKTYPE_* value
/// of a capture file (libpcap's `linktype_to_dlt`): they differ only for a
/// few old types whose DLT numbers vary between platforms.
fn dlt(linktype: u32) -> i32 {
    match linktype {
        100 => 11, // ATM_RFC1483
        101 => 12, // RAW, DLT_RAW on Linux
        102 => 15, // SLIP_BSDOS
        103 => 16, // PPP_BSDOS
        lt => lt as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libpcap is there in CI (xtask setup installs libpcap0.8).
    fn compile(expr: &str, lt: u32) -> Result<Filter, FilterError> {
        Filter::compile_for(expr, lt, Source::File { big_endian: false })
    }

    #[test]
    fn tcp_port_on_ethernet() {
        let f = compile("tcp port 80", LINKTYPE_ETHERNET).expect("compiles");
        let syn = crate::wire::build::TcpBuilder::v4([10, 0, 0, 1], 1234, [10, 0, 0, 2], 80)
            .flags(tcpmon_common::tcp::flags::SYN)
            .ethernet();
        assert!(f.matches(&syn, syn.len() as u32));
        let other =
            crate::wire::build::TcpBuilder::v4([10, 0, 0, 1], 1234, [10, 0, 0, 2], 81).ethernet();
        assert!(!f.matches(&other, other.len() as u32));
    }

    #[test]
    fn errors_read_as_tcpdump_prints_them() {
        let e = compile("tcp port", LINKTYPE_ETHERNET)
            .err()
            .expect("an error");
        assert_eq!(e.to_string(), "can't parse filter expression: syntax error");
        let e = compile("port foo", 101).err().expect("an error");
        assert_eq!(e.to_string(), "unknown port 'foo'");
        let e = compile("vlan 5", 101).err().expect("an error");
        assert_eq!(
            e.to_string(),
            "the filter expression cannot apply to link type raw IP (101): no VLAN support for Raw IP"
        );
    }

    #[test]
    fn raw_ip_compiles_live_and_from_files() {
        for source in [Source::Live, Source::File { big_endian: true }] {
            let f = Filter::compile_for("tcp port 80", 101, source).expect("compiles");
            assert_eq!(f.linktype(), 101);
        }
    }

    #[test]
    fn files_get_libpcaps_file_programs() {
        // On BSD loopback captures `ip6` is every BSD's AF_INET6 in a file,
        // the host's only live.
        let file = compile("ip6", 0).expect("compiles");
        let live = Filter::compile_for("ip6", 0, Source::Live).expect("compiles");
        assert_ne!(file.insns(), live.insns());
    }

    #[test]
    fn words_join_like_tcpdump() {
        let w: Vec<String> = ["tcp", "port", "80"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(expression(&w).as_deref(), Some("tcp port 80"));
        assert_eq!(expression(&[]), None);
    }
}
