//! A capture file mapped into memory, so frames borrow straight from the page
//! cache: no read calls, no copy into a buffer.
//!
//! The mapping is private and read-only, and its length is the file's size
//! when it was opened; the reader never looks past that length, so a file
//! that grows while being replayed is read as it was at open (like a
//! snapshot), and bytes rewritten in place may or may not be seen, which
//! only changes what the reader parses, never where it reads.
//!
//! A file *truncated* underneath the map is the one hazard mmap brings: a
//! page past the new end raises SIGBUS on access, which ends the process.
//! We accept that, as ripgrep and git do: catching SIGBUS would need a
//! signal handler that jumps out of arbitrary parsing code. Captures being
//! truncated while read is rare, and anyone who needs the old behaviour can
//! pipe the file (`tcpmon -T - < FILE`), which takes the buffered path.

use crate::prefetch::prefetch;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

/// A mapped file's page table entries are filled in ahead of the reader in
/// steps of this size (so the reader takes no page faults, and its prefetches
/// find the pages), and consumed pages are handed back in steps of this size,
/// so a replay's resident memory stays small however large the file is.
const STEP: usize = 4 << 20;

/// How far ahead of the reader the file is prefetched into cache. Only a
/// record's first bytes are read, which the hardware prefetcher does not see
/// as a stream, so without this every record header waits for memory.
const PREFETCH_AHEAD: usize = 4096;

/// Bytes the reader holds in memory: a mapped file, or bytes it was given.
pub(super) struct Memory {
    backing: Backing,
    /// Everything before this offset has been released (mapped files only).
    released: usize,
    /// Page table entries before this offset have been filled in.
    populated: usize,
    /// Everything before this offset has been prefetched.
    prefetched: usize,
}

enum Backing {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl Memory {
    pub(super) fn owned(bytes: Vec<u8>) -> Memory {
        Memory {
            backing: Backing::Owned(bytes),
            released: 0,
            populated: usize::MAX,
            prefetched: 0,
        }
    }

    /// Maps `file` if it is a regular, non-empty file; `None` otherwise
    /// (pipes, character devices, empty files), for the caller to read it.
    pub(super) fn map(file: &File) -> io::Result<Option<Memory>> {
        let meta = file.metadata()?;
        if !meta.is_file() || meta.len() == 0 {
            return Ok(None);
        }
        let Ok(len) = usize::try_from(meta.len()) else {
            return Ok(None);
        };
        Ok(Some(Memory {
            backing: Backing::Map(Mmap::new(file, len)?),
            released: 0,
            populated: 0,
            prefetched: 0,
        }))
    }

    #[inline]
    pub(super) fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Map(m) => m.bytes(),
            Backing::Owned(v) => v,
        }
    }

    /// Says that the reader is at `offset` and will not look before it
    /// again: the bytes just ahead are prefetched into cache, the page table
    /// is filled in further ahead, and pages of a mapped file before `offset`
    /// are dropped from the process (they stay in the page cache) once
    /// enough have piled up.
    #[inline]
    pub(super) fn consumed(&mut self, offset: usize) {
        let bytes = self.bytes();
        let ahead = (offset + PREFETCH_AHEAD).min(bytes.len());
        let from = self.prefetched.max(offset);
        for at in (from..ahead).step_by(64) {
            prefetch(&bytes[at]);
        }
        self.prefetched = self.prefetched.max(ahead);
        let Backing::Map(m) = &self.backing else {
            return;
        };
        if offset + STEP > self.populated {
            self.populated = m.populate(self.populated, offset + 2 * STEP);
        }
        if offset - self.released >= STEP {
            self.released = m.release(self.released, offset);
        }
    }
}

struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
    page: usize,
}

// SAFETY: the mapping is read-only and owned by this value alone.
unsafe impl Send for Mmap {}
unsafe impl Sync for Mmap {}

impl Mmap {
    fn new(file: &File, len: usize) -> io::Result<Mmap> {
        // SAFETY: a fresh private read-only mapping of an open descriptor;
        // the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: ptr/len are the mapping just made. The advice only tunes
        // read-ahead, so a failure is ignored.
        unsafe { libc::madvise(ptr, len, libc::MADV_SEQUENTIAL) };
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        Ok(Mmap {
            ptr: NonNull::new(ptr.cast()).expect("mmap succeeded, so not null"),
            len,
            page,
        })
    }

    #[inline]
    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes and lives as long as
        // self. (A file truncated underneath raises SIGBUS: see the module
        // documentation.)
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Fills in the page table for `from..to` (clamped to the mapping) from
    /// the page cache, reading the file as needed, and returns where that
    /// ends. Only a hint: on kernels before 5.14, or if it fails, pages are
    /// faulted in as they are touched.
    fn populate(&self, from: usize, to: usize) -> usize {
        let end = (to / self.page * self.page).min(self.len);
        if end > from {
            // SAFETY: from is page aligned (0 or a previous `end`, which is
            // whole pages or the mapping's end) and from..end lies in the
            // mapping.
            unsafe {
                libc::madvise(
                    self.ptr.as_ptr().add(from).cast(),
                    end - from,
                    libc::MADV_POPULATE_READ,
                )
            };
        }
        end.max(from)
    }

    /// Drops the whole pages in `from..to` from the process and returns
    /// where the released part now ends. The pages are unmodified private
    /// file pages, so a later access would just fault them in again from the
    /// file; the reader never makes one.
    fn release(&self, from: usize, to: usize) -> usize {
        let end = to / self.page * self.page;
        if end > from {
            // SAFETY: from is page aligned (0 or a previous `end`) and
            // from..end lies in the mapping. Failure leaves pages resident,
            // which is harmless.
            unsafe {
                libc::madvise(
                    self.ptr.as_ptr().add(from).cast(),
                    end - from,
                    libc::MADV_DONTNEED,
                )
            };
            end
        } else {
            from
        }
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; no borrow of it remains
        // since `bytes` borrows self.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
