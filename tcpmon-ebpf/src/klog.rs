//! Kernel diagnostics (`--kernel-log LEVEL`): what the programs did with a
//! packet they did not simply track, as aya-log lines that user space
//! passes to the `log` crate (`tcpmon::backend::ebpf::kernel_log`).
//!
//! - **Off by default, pruned at load time.** aya-log-ebpf's own switch,
//!   the read-only global `AYA_LOG_LEVEL`, is the level: user space loads
//!   it as 0 (off) unless asked, and the verifier then removes every line
//!   below, with the rate limit's map lookup and the clock it reads, as it
//!   removes the filter or the `stat` counters. What is left of a pruned
//!   line is the level's load before a jump the verifier hard-wires, so
//!   lines go where a packet is skipped or something is lost, or on rarer
//!   paths (the filter's verdicts, the flow cache's moves), never on a
//!   steady segment's.
//! - **Rate-limited when on.** Each CPU logs at most `LINES_PER_SECOND`
//!   lines a second (a window of one second in `KLOG_BUDGET`, per CPU, so
//!   no CPU waits for another); what it refuses beyond is counted in the
//!   same map, and user space reports the count. A flood of skipped packets
//!   thus costs at most that many records in aya-log's ring buffer.
//!
//! Levels: warn for what is lost (ring buffers full, records not created,
//! a filter's tail call failed), info for TCP-looking packets that could
//! not be tracked (malformed, fragments, too deep), debug for the filter's
//! verdicts and the flow cache's folds, trace for frames that are not TCP
//! at all (every ARP or UDP packet).

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray};
use aya_log_common::{ArgumentKind, DisplayHint, RecordFieldKind};
use aya_log_ebpf::macro_support::{AYA_LOGS, Level};
use tcpmon_common::{Counter, klog::Budget};

use tcpmon_common::klog::{LINES_PER_SECOND, TARGET};

#[map]
pub(crate) static KLOG_BUDGET: PerCpuArray<Budget> = PerCpuArray::with_max_entries(1, 0);

/// Whether lines of `level` are on: `AYA_LOG_LEVEL`, read-only, so a
/// constant for the verifier.
#[inline(always)]
pub(crate) fn enabled(level: Level) -> bool {
    aya_log_ebpf::macro_support::level_enabled(level)
}

/// Whether this CPU may log one more line now; counts a refusal.
#[inline(always)]
pub(crate) fn admit() -> bool {
    let Some(b) = KLOG_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's value; programs do not migrate mid-run.
    let b = unsafe { &mut *b };
    // SAFETY: a helper without preconditions.
    let second = unsafe { bpf_ktime_get_ns() } / 1_000_000_000;
    if b.second != second {
        b.second = second;
        b.lines = 0;
    }
    if b.lines >= LINES_PER_SECOND {
        b.dropped = b.dropped.wrapping_add(1);
        return false;
    }
    b.lines += 1;
    true
}

// ---------------------------------------------------------------------------
// Records. aya-log-ebpf's own macros build each record through closures
// that LLVM keeps as BPF subprograms (named with a hash of the build
// directory, so the object would not be reproducible, and the verifier
// refuses subprograms next to our tail calls without BTF), and reserve a
// size the verifier must bound. Here a line is a record built whole at
// compile time, in aya-log's wire format (aya-log-common 0.2: the one
// `aya_log::EbpfLogger` 0.3 reads), into which the values are written:
// one reservation of a constant size, one copy, a few stores.

/// A piece of a line: text, or a number written in decimal.
#[derive(Clone, Copy)]
pub(crate) enum Part {
    Text(&'static str),
    Num,
}

const MODULE: &str = "tcpmon_ebpf";

/// aya-log-common's field kinds (`RecordFieldKind`, `ArgumentKind`,
/// `DisplayHint`), as `u8` in const context.
const FIELD_TARGET: u8 = RecordFieldKind::Target as u8;
const FIELD_LEVEL: u8 = RecordFieldKind::Level as u8;
const FIELD_MODULE: u8 = RecordFieldKind::Module as u8;
const FIELD_FILE: u8 = RecordFieldKind::File as u8;
const FIELD_LINE: u8 = RecordFieldKind::Line as u8;
const FIELD_NUM_ARGS: u8 = RecordFieldKind::NumArgs as u8;
const ARG_HINT: u8 = ArgumentKind::DisplayHint as u8;
const ARG_U64: u8 = ArgumentKind::U64 as u8;
const ARG_STR: u8 = ArgumentKind::Str as u8;
const HINT_DEFAULT: u8 = DisplayHint::Default as u8;

/// A field's kind and length: 3 bytes.
const FIELD_HEAD: usize = 3;

/// Bytes of the header's fields, after the record's 2-byte length.
const fn header_size(file: &str) -> usize {
    2 + 6 * FIELD_HEAD + TARGET.len() + 1 + MODULE.len() + file.len() + 4 + 4
}

/// The record's bytes up to its first argument, its arguments, and where
/// each number's 8 bytes go.
pub(crate) const fn size(file: &str, parts: &[Part]) -> usize {
    let mut n = header_size(file);
    let mut i = 0;
    while i < parts.len() {
        n += match parts[i] {
            Part::Text(t) => FIELD_HEAD + t.len(),
            // A display hint, then the value.
            Part::Num => FIELD_HEAD + 1 + FIELD_HEAD + 8,
        };
        i += 1;
    }
    n
}

/// Where the `K` numbers' values start in the record.
pub(crate) const fn offsets<const K: usize>(file: &str, parts: &[Part]) -> [usize; K] {
    let mut out = [0; K];
    let (mut n, mut i, mut k) = (header_size(file), 0, 0);
    while i < parts.len() {
        match parts[i] {
            Part::Text(t) => n += FIELD_HEAD + t.len(),
            Part::Num => {
                n += FIELD_HEAD + 1 + FIELD_HEAD;
                out[k] = n;
                k += 1;
                n += 8;
            }
        }
        i += 1;
    }
    assert!(k == K, "one value per number");
    out
}

/// The record of a line at `level` from `file`:`line`, numbers zero, in
/// `W` words (the reservation is 8-aligned, so the copy is word by word).
pub(crate) const fn template<const W: usize>(
    level: Level,
    file: &str,
    line: u32,
    parts: &[Part],
) -> [u64; W] {
    let len = size(file, parts);
    assert!(len <= W * 8 && len <= u16::MAX as usize);
    let mut b = [0u8; 512];
    assert!(W * 8 <= 512, "a line of at most 512 bytes");
    let mut n = put(&mut b, 0, &(len as u16).to_ne_bytes());
    n = field(&mut b, n, FIELD_TARGET, TARGET.as_bytes());
    n = field(&mut b, n, FIELD_LEVEL, &[level as u8]);
    n = field(&mut b, n, FIELD_MODULE, MODULE.as_bytes());
    n = field(&mut b, n, FIELD_FILE, file.as_bytes());
    n = field(&mut b, n, FIELD_LINE, &line.to_ne_bytes());
    let mut args = 0u32;
    let mut i = 0;
    while i < parts.len() {
        args += match parts[i] {
            Part::Text(_) => 1,
            Part::Num => 2,
        };
        i += 1;
    }
    n = field(&mut b, n, FIELD_NUM_ARGS, &args.to_ne_bytes());
    i = 0;
    while i < parts.len() {
        n = match parts[i] {
            Part::Text(t) => field(&mut b, n, ARG_STR, t.as_bytes()),
            Part::Num => {
                let n = field(&mut b, n, ARG_HINT, &[HINT_DEFAULT]);
                field(&mut b, n, ARG_U64, &[0; 8])
            }
        };
        i += 1;
    }
    assert!(n == len);
    let mut words = [0u64; W];
    let mut w = 0;
    while w < W {
        let mut word = [0u8; 8];
        let mut j = 0;
        while j < 8 {
            word[j] = b[w * 8 + j];
            j += 1;
        }
        words[w] = u64::from_ne_bytes(word);
        w += 1;
    }
    words
}

/// Writes a field (kind, length, value) at `n`; returns its end.
const fn field(b: &mut [u8; 512], n: usize, kind: u8, value: &[u8]) -> usize {
    let n = put(b, n, &[kind]);
    let n = put(b, n, &(value.len() as u16).to_ne_bytes());
    put(b, n, value)
}

const fn put(b: &mut [u8; 512], mut n: usize, bytes: &[u8]) -> usize {
    let mut i = 0;
    while i < bytes.len() {
        b[n] = bytes[i];
        n += 1;
        i += 1;
    }
    n
}

/// Sends the record `rec` with `values` at `at` to aya-log's ring buffer;
/// a full buffer loses the line (the rate limit keeps that rare).
#[inline(always)]
pub(crate) fn send<const W: usize, const K: usize>(
    rec: &[u64; W],
    at: &[usize; K],
    values: [u64; K],
) {
    let Some(mut entry) = AYA_LOGS.reserve::<[u64; W]>(0) else {
        return;
    };
    let p = entry.as_mut_ptr();
    // SAFETY: the reservation is W words, 8-aligned; every offset in `at`
    // is at most the record's length minus 8 (see `offsets`).
    unsafe {
        p.write(*rec);
        let bytes = p.cast::<u8>();
        let mut k = 0;
        while k < K {
            bytes
                .add(at[k])
                .cast::<[u8; 8]>()
                .write_unaligned(values[k].to_ne_bytes());
            k += 1;
        }
    }
    entry.submit(0);
}

/// A line at `$level` (`Error`, `Warn`, `Info`, `Debug`, `Trace`): string
/// literals and `{value}`s (any integer, written in decimal), as in
/// `klog!(Info, "skipped " {len} " bytes")`. Nothing when the level is off
/// (pruned at load time), dropped beyond the CPU's budget.
macro_rules! klog {
    ($level:ident, $($msg:tt)+) => {
        $crate::klog::klog!(@ $level [] []; $($msg)+)
    };
    (@ $level:ident [$($parts:expr,)*] [$($vals:expr,)*]; $text:literal $($rest:tt)*) => {
        $crate::klog::klog!(@ $level [$($parts,)* $crate::klog::Part::Text($text),] [$($vals,)*]; $($rest)*)
    };
    (@ $level:ident [$($parts:expr,)*] [$($vals:expr,)*]; {$v:expr} $($rest:tt)*) => {
        $crate::klog::klog!(@ $level [$($parts,)* $crate::klog::Part::Num,] [$($vals,)* ($v) as u64,]; $($rest)*)
    };
    (@ $level:ident [$($parts:expr,)*] [$($vals:expr,)*];) => {
        if $crate::klog::enabled(aya_log_ebpf::macro_support::Level::$level)
            && $crate::klog::admit()
        {
            const PARTS: &[$crate::klog::Part] = &[$($parts,)*];
            const VALUES: usize = <[&str]>::len(&[$(stringify!($vals)),*]);
            const WORDS: usize = $crate::klog::size(file!(), PARTS).div_ceil(8);
            const REC: [u64; WORDS] = $crate::klog::template::<WORDS>(
                aya_log_ebpf::macro_support::Level::$level,
                file!(),
                line!(),
                PARTS,
            );
            const AT: [usize; VALUES] = $crate::klog::offsets::<VALUES>(file!(), PARTS);
            $crate::klog::send::<WORDS, VALUES>(&REC, &AT, [$($vals),*]);
        }
    };
}
pub(crate) use klog;

/// Why a packet of `len` bytes was not tracked: the counter it went to.
#[inline(always)]
pub(crate) fn skipped(len: u32, why: Counter) {
    match why {
        Counter::Malformed => klog!(
            Info,
            "skipped a packet of " {len} " bytes: malformed (too short, or inconsistent IP or TCP header lengths)"
        ),
        Counter::TooDeep => klog!(
            Info,
            "skipped a packet of " {len} " bytes: more VLAN tags or IPv6 extension headers than tcpmon follows"
        ),
        Counter::Fragment => klog!(
            Info,
            "skipped a packet of " {len} " bytes: an IP fragment after the first (no TCP header)"
        ),
        Counter::NotIp => klog!(Trace, "skipped a packet of " {len} " bytes: not IPv4 or IPv6"),
        Counter::NotTcp => klog!(Trace, "skipped a packet of " {len} " bytes: IP, not TCP"),
        _ => {}
    }
}
