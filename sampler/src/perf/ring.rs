//! One perf event's mmap ring buffer: the kernel writes records at `data_head`, we read them and
//! hand the space back by advancing `data_tail` (forward, non-overwriting mode).
//!
//! The metadata page's `data_head` is read with acquire ordering (the kernel's records are
//! complete up to it) and `data_tail` written with release ordering (the kernel may reuse the
//! space only after we read it), as `perf_event_open(2)` asks. A record may wrap around the end
//! of the data area; it is copied into one contiguous buffer before it is parsed.

use perf_event_open_sys::bindings::perf_event_mmap_page;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// The size of a page (the ring's unit; the first page holds the metadata).
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// A mapped ring buffer of one perf event (and the event's file descriptor).
pub struct Ring {
    /// Kept open as long as the mapping lives (closing it ends the event).
    _fd: OwnedFd,
    base: *mut libc::c_void,
    map_len: usize,
    data_offset: usize,
    data_size: u64,
}

// SAFETY: the mapping is owned by this value alone; the raw pointer is only used through
// `&mut self` (draining) and in Drop.
unsafe impl Send for Ring {}

impl Ring {
    /// Maps `data_pages` (a power of two) pages of ring buffer plus the metadata page for `fd`.
    pub fn map(fd: OwnedFd, data_pages: usize) -> std::io::Result<Ring> {
        let page = page_size();
        let map_len = (data_pages + 1) * page;
        // SAFETY: a fresh shared mapping of the event's buffer; the kernel validates the size.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Ring {
            _fd: fd,
            base,
            map_len,
            data_offset: page,
            data_size: (data_pages * page) as u64,
        })
    }

    /// The descriptor of the event that owns the ring (to send other events' records here).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self._fd.as_raw_fd()
    }

    fn head(&self) -> &AtomicU64 {
        let off = std::mem::offset_of!(perf_event_mmap_page, data_head);
        // SAFETY: the metadata page is mapped for as long as self; data_head is an aligned u64
        // the kernel updates, which AtomicU64 reads without tearing.
        unsafe { &*(self.base.cast::<u8>().add(off).cast::<AtomicU64>()) }
    }

    fn tail(&self) -> &AtomicU64 {
        let off = std::mem::offset_of!(perf_event_mmap_page, data_tail);
        // SAFETY: as for `head`; data_tail is written only by us.
        unsafe { &*(self.base.cast::<u8>().add(off).cast::<AtomicU64>()) }
    }

    /// Copies `len` bytes of the data area starting at ring position `pos` into `out`.
    fn copy_out(&self, pos: u64, len: usize, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(len);
        let size = self.data_size as usize;
        let start = (pos % self.data_size) as usize;
        let first = len.min(size - start);
        // SAFETY: [data_offset, data_offset + size) is the mapped data area; `start < size`,
        // `first <= size - start` and `len - first <= size` keep both slices inside it.
        unsafe {
            let data = self.base.cast::<u8>().add(self.data_offset);
            out.extend_from_slice(std::slice::from_raw_parts(data.add(start), first));
            if first < len {
                out.extend_from_slice(std::slice::from_raw_parts(data, len - first));
            }
        }
    }

    /// Hands every complete record now in the ring (header included, contiguous) to `each`,
    /// oldest first, and frees their space. `scratch` is reused between records.
    pub fn drain(&mut self, scratch: &mut Vec<u8>, each: &mut dyn FnMut(&[u8])) {
        let head = self.head().load(Ordering::Acquire);
        let mut tail = self.tail().load(Ordering::Relaxed);
        while head.saturating_sub(tail) >= 8 {
            self.copy_out(tail, 8, scratch);
            let size = u16::from_ne_bytes([scratch[6], scratch[7]]) as u64;
            if size < 8 || size > head - tail || size > self.data_size {
                // A corrupt header (never written by a sane kernel): drop everything rather
                // than parse garbage.
                tail = head;
                break;
            }
            self.copy_out(tail, size as usize, scratch);
            each(scratch);
            tail += size;
        }
        self.tail().store(tail, Ordering::Release);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `map`, exactly once.
        unsafe {
            libc::munmap(self.base, self.map_len);
        }
    }
}
