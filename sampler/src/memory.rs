//! How the agent keeps its resident memory small, and gives memory back after a burst of work.
//!
//! An agent lives on every worker host, next to the processes it samples, so what it holds
//! between runs is memory taken from them. Most of it is not the agent's own data but the
//! allocator's: glibc's `malloc` keeps freed memory for reuse, and three of its habits turned a
//! few milliseconds of symbolization into 10+ MiB held for good (measured with `malloc_stats`
//! on a running agent: one arena with 11.8 MB from the system and 0.15 MB in use):
//!
//! 1. **Dynamic mmap threshold.** Large blocks (the inflated DWARF sections of a library, a few
//!    MiB each) are first served by `mmap` and returned by `munmap` on free. But freeing such a
//!    block *raises* the threshold to its size (and the trim threshold to twice that), so the
//!    next run's equally large blocks come from the heap instead, and stay there.
//! 2. **No trimming of a thread arena's top.** Memory freed at the top of a non-main arena goes
//!    back only when it exceeds the (now raised) trim threshold, and `malloc_trim` never trims a
//!    non-main arena's top at all.
//! 3. **One arena per thread** (up to 8 per core): each keeps its own free memory.
//!
//! [`tune_allocator`] fixes the thresholds (setting them explicitly turns the dynamic
//! adjustment off) and caps the arenas; [`release_free_memory`] hands free pages in the middle
//! of the heap back, which the symbolizer calls when it drops its caches after a quiet period
//! (`sampler::symbolize`). Neither changes what the agent computes; they only decide when
//! freed memory leaves the process. Other C libraries (musl) have neither knob; there both are
//! no-ops.

/// Blocks at least this large are served by `mmap` and returned to the kernel when freed.
/// glibc's own initial value (128 KiB); fixing it keeps it from growing.
pub const MMAP_THRESHOLD: usize = 128 * 1024;

/// Free memory at the top of a heap beyond this is returned to the kernel at once.
pub const TRIM_THRESHOLD: usize = 256 * 1024;

/// Most malloc arenas. The agent's threads (async workers, blocking pool, tracer, symbolizer)
/// allocate little at the same time, so contention is rare, and fewer arenas hold less idle
/// memory.
pub const ARENA_MAX: usize = 2;

/// Sets the allocator's thresholds and arena cap ([`MMAP_THRESHOLD`], [`TRIM_THRESHOLD`],
/// [`ARENA_MAX`]). Call once at start, before threads are spawned (arenas already created
/// stay). Process-wide: meant for the agent's own binary, not for a library host.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it takes no pointers and is thread safe.
    unsafe {
        let set = |param: libc::c_int, value: usize, what: &str| {
            let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
            if libc::mallopt(param, value) == 0 {
                tracing::debug!(what, value, "mallopt refused a setting");
            }
        };
        set(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD, "M_MMAP_THRESHOLD");
        set(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD, "M_TRIM_THRESHOLD");
        set(libc::M_ARENA_MAX, ARENA_MAX, "M_ARENA_MAX");
    }
}

/// Returns memory the allocator holds but no longer uses to the kernel: free chunks in the
/// middle of every arena lose their pages (`MADV_DONTNEED`), the main heap's top is trimmed.
/// Costs a walk over the free lists (well under a millisecond for the agent's heap), so it is
/// called after a burst of work, not per allocation.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists, under its locks; it takes
    // no pointers and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Resident memory of this process from `/proc/self/status`: (`VmRSS`, `RssAnon`) in KiB.
/// For logs and tests that check memory is given back; `None` where `/proc` lacks the fields.
pub fn resident_kib() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("RssAnon:")?))
}
