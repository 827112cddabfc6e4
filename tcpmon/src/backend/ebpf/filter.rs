//! The filter in the kernel: the expression's classic program translated to
//! eBPF (`crate::filter::translate`), loaded from its instructions as a
//! program of its own per hook, and put at entry 0 of `FILTER_TC` /
//! `FILTER_XDP`. Loaded with a filter, the hooks tail-call it first; it
//! tail-calls `tcpmon_tc_rest` / `tcpmon_xdp_rest` with the packets it keeps
//! and counts the others (see tcpmon-ebpf's filter.rs).
//!
//! Why a program of its own: aya loads programs from an object file, and a
//! placeholder patched into the object, or `freplace` of a global function,
//! would need BTF function info and tracing rights this object and some
//! kernels lack. A tail call reaches it on every kernel tcpmon supports, the
//! verifier walks it alone, and swapping the filter is one map update.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result, anyhow, bail};
use aya::Ebpf;
use aya::maps::{Map, MapData};

use tcpmon_common::{Counter, cbpf};

use super::load::{PROG_TC_REJECTED, PROG_XDP_REJECTED};
use crate::filter::translate::{self, Exit, Hook, insn::Insn};

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// What aya loads XDP programs with; tail calls need caller and callee to
/// agree (Linux 6.17 on).
const BPF_XDP: u32 = 37;
const TC_ACT_UNSPEC: i32 = -1;
const XDP_PASS: i32 = 2;

/// The translated `insns` in the kernel, from the next packet on, for both
/// hooks. Only effective when the programs were loaded with a filter
/// (`LoadOptions::filter`); without one they never look.
pub fn set_filter(ebpf: &mut Ebpf, insns: &[cbpf::Insn]) -> Result<()> {
    let counters = map_fd(ebpf, tcpmon_common::MAP_COUNTERS)?;
    for (hook, rest, array, (rejecting, rejected)) in [
        (
            Hook::Tc,
            tcpmon_common::MAP_REST_TC,
            tcpmon_common::MAP_FILTER_TC,
            (PROG_TC_REJECTED, tcpmon_common::MAP_REJECTED_TC),
        ),
        (
            Hook::Xdp,
            tcpmon_common::MAP_REST_XDP,
            tcpmon_common::MAP_FILTER_XDP,
            (PROG_XDP_REJECTED, tcpmon_common::MAP_REJECTED_XDP),
        ),
    ] {
        // The loader loads the programs that log rejected packets only for
        // `--kernel-log debug`; without them the translation only counts.
        let logs_rejects = ebpf.program(rejecting).is_some_and(|p| p.fd().is_ok());
        let rejected = match logs_rejects {
            true => Some(map_fd(ebpf, rejected)?),
            false => None,
        };
        let exit = Exit::Hook {
            rejected,
            rest: map_fd(ebpf, rest)?,
            counters,
            filtered: Counter::Filtered as u32,
            untracked: Counter::Untracked as u32,
            pass: match hook {
                Hook::Tc => TC_ACT_UNSPEC,
                Hook::Xdp => XDP_PASS,
            },
        };
        let code = translate::translate(insns, hook, exit)?;
        let prog = FilterProgram::load(hook, &code)?;
        put(map_fd(ebpf, array)?, 0, prog.fd.as_raw_fd())
            .with_context(|| format!("putting the filter program into {array}"))?;
        // The array holds its own reference to the program.
    }
    Ok(())
}

/// A translated filter loaded on its own, for tests and benchmarks
/// (`Exit::Verdict` programs give their verdict as return value).
pub struct FilterProgram {
    fd: OwnedFd,
    hook: Hook,
}

impl FilterProgram {
    /// Loads `code` as a program of `hook`'s type: the verifier runs here.
    pub fn load(hook: Hook, code: &[Insn]) -> Result<FilterProgram> {
        match prog_load(hook, code, None) {
            Ok(fd) => Ok(FilterProgram { fd, hook }),
            Err(e) => {
                // Again with the verifier's log, to say why.
                let mut log = vec![0u8; 1 << 22];
                let again = prog_load(hook, code, Some(&mut log));
                let log = CStr::from_bytes_until_nul(&log)
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                match again {
                    Ok(fd) => Ok(FilterProgram { fd, hook }),
                    Err(_) => Err(anyhow!(
                        "the kernel refused the filter's translation ({} eBPF instructions for \
                         {hook:?}): {e}; verifier: {}",
                        code.len(),
                        tail.join(" | ")
                    )),
                }
            }
        }
    }

    /// Runs the program once on `frame` (BPF_PROG_TEST_RUN): its return
    /// value. TC wants a frame with a whole Ethernet header.
    pub fn run(&self, frame: &[u8]) -> io::Result<u32> {
        self.run_repeat(frame, 1).map(|(ret, _)| ret)
    }

    /// Runs it `repeat` times: the return value and the kernel's mean time
    /// a run, in ns.
    pub fn run_repeat(&self, frame: &[u8], repeat: u32) -> io::Result<(u32, u32)> {
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat,
            ..TestRunAttr::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok((attr.retval, attr.duration))
    }

    pub fn hook(&self) -> Hook {
        self.hook
    }
}

/// The file descriptor of the object's map `name`, for the translation's
/// map references and updates.
fn map_fd(ebpf: &Ebpf, name: &str) -> Result<i32> {
    let map = ebpf
        .map(name)
        .ok_or_else(|| anyhow!("the embedded eBPF object has no {name} map"))?;
    let data: &MapData = match map {
        Map::ProgramArray(d) | Map::PerCpuArray(d) | Map::Array(d) => d,
        _ => bail!("{name} is not an array map"),
    };
    Ok(data.fd().as_fd().as_raw_fd())
}

/// `union bpf_attr` for BPF_PROG_LOAD, as far as tcpmon sets it.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// ... for BPF_PROG_TEST_RUN.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
}

/// ... for BPF_MAP_UPDATE_ELEM.
#[repr(C)]
#[derive(Default)]
struct MapUpdateAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn prog_load(hook: Hook, code: &[Insn], log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
    let (prog_type, expected_attach_type) = match hook {
        Hook::Tc => (BPF_PROG_TYPE_SCHED_CLS, 0),
        Hook::Xdp => (BPF_PROG_TYPE_XDP, BPF_XDP),
    };
    let mut prog_name = [0u8; 16];
    prog_name[..13].copy_from_slice(b"tcpmon_filter");
    let (log_level, log_size, log_buf) = match log {
        Some(buf) => (1, buf.len() as u32, buf.as_mut_ptr() as u64),
        None => (0, 0, 0),
    };
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: code.len() as u32,
        insns: code.as_ptr() as u64,
        license: c"GPL".as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        prog_name,
        expected_attach_type,
        ..ProgLoadAttr::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: BPF_PROG_LOAD returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `array[index] = prog` in a program array.
fn put(array: i32, index: u32, prog: i32) -> io::Result<()> {
    let value = prog as u32;
    let mut attr = MapUpdateAttr {
        map_fd: array as u32,
        key: &index as *const u32 as u64,
        value: &value as *const u32 as u64,
        ..MapUpdateAttr::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// The bpf(2) system call with `attr`, whose pointers outlive the call.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i32> {
    // SAFETY: `attr` is a repr(C) prefix of `union bpf_attr` for `cmd`,
    // its size passed along; the kernel zero-checks nothing beyond it.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as u32) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as i32)
    }
}
