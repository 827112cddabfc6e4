//! Reading whole maps: aya 0.14 iterates a hash map with two syscalls per
//! entry; at 262,144 flows that is half a million syscalls per poll.
//! BPF_MAP_LOOKUP_BATCH (Linux 5.6) copies thousands of entries per call;
//! before 5.6 the slow path iterates.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use anyhow::Result;
use aya::maps::{Map, MapData, MapError};

use tcpmon_common::{FlowRecord, FlowRecordBits, decode};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BATCH: usize = 4096;
/// The kernel's "not supported" for commands a map type lacks.
const ENOTSUPP: i32 = 524;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of a map, `BATCH` a syscall, to `each`: its key and its
/// values, `per_key` of them (the CPUs' of a per-CPU map, else 1).
pub(super) fn lookup_batch<K, V>(
    map: &MapData,
    per_key: usize,
    mut each: impl FnMut(K, &[V]),
) -> io::Result<()>
where
    K: Copy + bytemuck::Zeroable,
    V: Copy + bytemuck::Zeroable,
{
    // The kernel lays a key's values out 8-byte aligned.
    const { assert!(size_of::<V>().is_multiple_of(8)) };
    let fd = map.fd().as_fd().as_raw_fd();
    let mut keys = vec![K::zeroed(); BATCH];
    let mut values = vec![V::zeroed(); BATCH * per_key];
    // For hash maps the position is a bucket number, for arrays an index
    // (u32s); 8 bytes is room enough for any map type's token.
    let mut position = [0u64; 2];
    let mut first = true;
    loop {
        let (token_in, token_out) = position.split_at_mut(1);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: attr points at buffers of `count` keys and values that
        // outlive the call; the kernel writes at most that many.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        // ENOENT: the end of the map. The kernel reports how many it copied
        // then too, where other errors leave `count` as it was.
        let last = ret < 0;
        if last {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e);
            }
        }
        let n = (attr.count as usize).min(BATCH);
        for (key, vals) in keys[..n].iter().zip(values.chunks_exact(per_key)) {
            each(*key, vals);
        }
        if last {
            return Ok(());
        }
        position[0] = position[1];
        first = false;
    }
}

pub(super) fn batch_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

/// The slow path, for kernels before 5.6.
pub(super) fn iterate<K: aya::Pod>(map: &Map, out: &mut Vec<(K, FlowRecord)>) -> Result<()> {
    let flows = aya::maps::HashMap::<_, K, FlowRecordBits>::try_from(map)?;
    for entry in flows.iter() {
        match entry {
            Ok((k, v)) => out.push((k, decode(v)?)),
            // The LRU evicted it between the two syscalls.
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
