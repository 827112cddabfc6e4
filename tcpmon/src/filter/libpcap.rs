//! libpcap, loaded when a filter expression is first compiled.
//!
//! tcpmon links no libpcap: without a filter it runs where libpcap is not
//! installed. A filter needs libpcap's compiler, so only then is the shared
//! library opened (`dlopen`), and only functions every libpcap since 1.0 has
//! are used: `pcap_open_dead`, `pcap_fopen_offline`, `pcap_compile`,
//! `pcap_geterr`, `pcap_freecode`, `pcap_close`, and `bpf_filter`, its own
//! interpreter, which tests hold tcpmon's interpreter and translation to.
//!
//! For captures the expression is compiled on a handle libpcap believes
//! reads a capture file of that link type and byte order (a pcap header in
//! memory): libpcap compiles some primitives differently for files than for
//! live handles (on DLT_NULL, `ip6` matches the AF_INET6 values of every
//! BSD in a file, only the host's live), and tcpmon must keep exactly what
//! `tcpdump -r` keeps.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::sync::{Mutex, OnceLock};

use tcpmon_common::cbpf::Insn;

/// Sonames tried in order: Debian's package `libpcap0.8` installs
/// `libpcap.so.0.8`, other distributions `libpcap.so.1`; the unversioned
/// name comes with development packages only.
const SONAMES: [&str; 3] = ["libpcap.so.0.8", "libpcap.so.1", "libpcap.so"];

/// Overrides `SONAMES` with one name or path: for systems that keep libpcap
/// elsewhere, and for tests of the error a missing libpcap gives.
pub const ENV_LIBPCAP: &str = "TCPMON_LIBPCAP";

/// What to tell a user without libpcap.
pub const INSTALL_HINT: &str = "install it with `apt-get install libpcap0.8` (Debian, Ubuntu) or \
     `dnf install libpcap` (Fedora, RHEL); tcpmon needs it only for filter expressions";

const PCAP_NETMASK_UNKNOWN: u32 = 0xffff_ffff;
/// libpcap's largest snapshot length; the value only shapes the `ret` of an
/// accepting program, which tcpmon reads as accept / reject.
const SNAPLEN: c_int = 262_144;

#[repr(C)]
struct BpfProgram {
    bf_len: c_uint,
    bf_insns: *mut Insn,
}

type OpenDead = unsafe extern "C" fn(c_int, c_int) -> *mut c_void;
type FopenOffline = unsafe extern "C" fn(*mut libc::FILE, *mut c_char) -> *mut c_void;
type Compile =
    unsafe extern "C" fn(*mut c_void, *mut BpfProgram, *const c_char, c_int, u32) -> c_int;
type GetErr = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type FreeCode = unsafe extern "C" fn(*mut BpfProgram);
type Close = unsafe extern "C" fn(*mut c_void);
type BpfFilter = unsafe extern "C" fn(*const Insn, *const u8, c_uint, c_uint) -> c_uint;

struct Libpcap {
    open_dead: OpenDead,
    fopen_offline: FopenOffline,
    compile: Compile,
    geterr: GetErr,
    freecode: FreeCode,
    close: Close,
    bpf_filter: BpfFilter,
    /// libpcap before 1.8 had one parser for the whole process.
    lock: Mutex<()>,
}

/// Why libpcap could not be loaded: which names were tried and what the
/// dynamic loader said.
#[derive(Debug, Clone)]
pub struct NotLoaded {
    pub tried: Vec<String>,
    pub reason: String,
}

fn library() -> Result<&'static Libpcap, NotLoaded> {
    static LIB: OnceLock<Result<Libpcap, NotLoaded>> = OnceLock::new();
    LIB.get_or_init(open).as_ref().map_err(Clone::clone)
}

fn open() -> Result<Libpcap, NotLoaded> {
    let names: Vec<String> = match std::env::var(ENV_LIBPCAP) {
        Ok(name) if !name.is_empty() => vec![name],
        _ => SONAMES.iter().map(|s| s.to_string()).collect(),
    };
    let mut reason = String::new();
    for name in &names {
        let Ok(c) = CString::new(name.as_str()) else {
            reason = format!("{name:?} contains a NUL byte");
            continue;
        };
        // SAFETY: a NUL-terminated name; the handle is never closed, so the
        // function pointers taken from it stay valid for the process.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            reason = dlerror();
            continue;
        }
        match symbols(handle) {
            Ok(lib) => return Ok(lib),
            Err(e) => reason = e,
        }
    }
    Err(NotLoaded {
        tried: names,
        reason,
    })
}

fn dlerror() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until
    // the next dl* call on this thread.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        return "unknown dlopen error".into();
    }
    // SAFETY: as above.
    unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
}

fn symbols(handle: *mut c_void) -> Result<Libpcap, String> {
    let sym = |name: &CStr| -> Result<*mut c_void, String> {
        // SAFETY: a valid handle and a NUL-terminated name.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
        if p.is_null() { Err(dlerror()) } else { Ok(p) }
    };
    // SAFETY: each symbol is libpcap's function of that name, whose C
    // signature the type spells.
    unsafe {
        Ok(Libpcap {
            open_dead: std::mem::transmute::<*mut c_void, OpenDead>(sym(c"pcap_open_dead")?),
            fopen_offline: std::mem::transmute::<*mut c_void, FopenOffline>(sym(
                c"pcap_fopen_offline",
            )?),
            compile: std::mem::transmute::<*mut c_void, Compile>(sym(c"pcap_compile")?),
            geterr: std::mem::transmute::<*mut c_void, GetErr>(sym(c"pcap_geterr")?),
            freecode: std::mem::transmute::<*mut c_void, FreeCode>(sym(c"pcap_freecode")?),
            close: std::mem::transmute::<*mut c_void, Close>(sym(c"pcap_close")?),
            bpf_filter: std::mem::transmute::<*mut c_void, BpfFilter>(sym(c"bpf_filter")?),
            lock: Mutex::new(()),
        })
    }
}

/// libpcap's own verdict on a frame: `bpf_filter` running the valid
/// program `insns` on the captured `data` of a frame `wire_len` long.
pub fn bpf_filter(insns: &[Insn], data: &[u8], wire_len: u32) -> Result<u32, NotLoaded> {
    let lib = library()?;
    // SAFETY: a validated program (it ends in a `ret`, jumps stay inside)
    // and the frame's bytes with their true length; bpf_filter reads
    // nothing beyond either.
    Ok(unsafe {
        (lib.bpf_filter)(
            insns.as_ptr(),
            data.as_ptr(),
            wire_len,
            data.len() as c_uint,
        )
    })
}

/// What `compile` can report.
#[derive(Debug, Clone)]
pub enum CompileError {
    NotLoaded(NotLoaded),
    /// libpcap's message, as tcpdump prints it.
    Pcap(String),
}

/// What libpcap is told it compiles for.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// A live Ethernet-like interface (a handle from `pcap_open_dead`);
    /// `dlt` is a DLT_* value.
    Live { dlt: c_int },
    /// A capture file with this LINKTYPE_* value, written big- or
    /// little-endian.
    File { linktype: u32, big_endian: bool },
}

/// Compiles `expr` with libpcap for `target`, optimized, with no netmask
/// known (what tcpdump does for a file, and live without an address).
pub fn compile(expr: &str, target: Target) -> Result<Vec<Insn>, CompileError> {
    let lib = library().map_err(CompileError::NotLoaded)?;
    let cexpr = CString::new(expr)
        .map_err(|_| CompileError::Pcap("the filter expression contains a NUL byte".into()))?;
    let _guard = lib.lock.lock().unwrap_or_else(|e| e.into_inner());
    // The file header `pcap_fopen_offline` reads: it must outlive the handle.
    let header = match target {
        Target::File {
            linktype,
            big_endian,
        } => Some(pcap_header(linktype, big_endian)),
        Target::Live { .. } => None,
    };
    // SAFETY: plain libpcap calls on a handle this function owns and closes;
    // the program's instructions are copied before `pcap_freecode`.
    unsafe {
        let p = match (target, &header) {
            (Target::File { .. }, Some(h)) => {
                let f = libc::fmemopen(h.as_ptr() as *mut c_void, h.len(), c"r".as_ptr());
                if f.is_null() {
                    return Err(CompileError::Pcap("fmemopen failed".into()));
                }
                let mut errbuf = [0 as c_char; 512];
                let p = (lib.fopen_offline)(f, errbuf.as_mut_ptr());
                if p.is_null() {
                    libc::fclose(f);
                    let e = CStr::from_ptr(errbuf.as_ptr())
                        .to_string_lossy()
                        .into_owned();
                    return Err(CompileError::Pcap(e));
                }
                p
            }
            (Target::Live { dlt }, _) => (lib.open_dead)(dlt, SNAPLEN),
            _ => std::ptr::null_mut(),
        };
        if p.is_null() {
            return Err(CompileError::Pcap("pcap_open_dead failed".into()));
        }
        let mut prog = BpfProgram {
            bf_len: 0,
            bf_insns: std::ptr::null_mut(),
        };
        let r = (lib.compile)(p, &mut prog, cexpr.as_ptr(), 1, PCAP_NETMASK_UNKNOWN);
        let out = if r != 0 {
            let e = (lib.geterr)(p);
            let msg = if e.is_null() {
                "pcap_compile failed".into()
            } else {
                CStr::from_ptr(e).to_string_lossy().into_owned()
            };
            Err(CompileError::Pcap(msg))
        } else {
            let insns = if prog.bf_insns.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(prog.bf_insns, prog.bf_len as usize).to_vec()
            };
            (lib.freecode)(&mut prog);
            Ok(insns)
        };
        // Closes the memory stream of a file handle too.
        (lib.close)(p);
        out
    }
}

/// A pcap file header (no records) for `linktype` in the given byte order:
/// magic, version 2.4, zone, sigfigs, snap length, link type.
fn pcap_header(linktype: u32, big_endian: bool) -> Vec<u8> {
    let w32 = |v: u32| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let w16 = |v: u16| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let mut h = Vec::with_capacity(24);
    h.extend(w32(0xa1b2_c3d4));
    h.extend(w16(2));
    h.extend(w16(4));
    h.extend(w32(0));
    h.extend(w32(0));
    h.extend(w32(SNAPLEN as u32));
    h.extend(w32(linktype));
    h
}
