//! Opening the two perf events of a sampled thread and parsing their records.
//!
//! * **task clock** (`PERF_COUNT_SW_TASK_CLOCK`): a sample every `period` of the thread's CPU
//!   time, taken in the timer interrupt while the thread runs: its user registers and a copy of
//!   the top of its user stack. The thread is never stopped.
//! * **context switches** (`PERF_COUNT_SW_CONTEXT_SWITCHES`, every one): a sample each time the
//!   thread leaves the CPU, with the user registers and stack where it left (for a blocked
//!   thread: the system call it sleeps in).
//!
//! Both sample `TID | TIME | REGS_USER | STACK_USER`, timed with `CLOCK_MONOTONIC`.

use super::super::stack::Regs;
use perf_event_open_sys::bindings::{
    PERF_COUNT_SW_CONTEXT_SWITCHES, PERF_COUNT_SW_TASK_CLOCK, PERF_FLAG_FD_CLOEXEC,
    PERF_RECORD_LOST, PERF_RECORD_SAMPLE, PERF_SAMPLE_REGS_USER, PERF_SAMPLE_STACK_USER,
    PERF_SAMPLE_TID, PERF_SAMPLE_TIME, PERF_TYPE_SOFTWARE, perf_event_attr,
};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// User stack bytes copied per task-clock sample (the same first window as a ptrace read).
pub const CLOCK_STACK_BYTES: u32 = 16 * 1024;
/// User stack bytes copied per switch-out (blocked threads sit in shallow library frames; a
/// busy thread switches often, so each copy is kept smaller).
pub const SWITCH_STACK_BYTES: u32 = 8 * 1024;

/// x86_64 `perf_regs` indices: BP = 6, SP = 7, IP = 8. Samples carry them in index order.
#[cfg(target_arch = "x86_64")]
const REGS_MASK: u64 = (1 << 6) | (1 << 7) | (1 << 8);
/// aarch64 `perf_regs` indices: x29 (fp) = 29, lr = 30, sp = 31, pc = 32.
#[cfg(target_arch = "aarch64")]
const REGS_MASK: u64 = (1 << 29) | (1 << 30) | (1 << 31) | (1 << 32);

/// CPU time after which an armed probe ([`Kind::Probe`]) takes its one sample.
pub const PROBE_PERIOD_NS: u64 = 100_000;

/// Which of a thread's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Task clock: on-CPU samples.
    Clock,
    /// A second task clock, opened disabled, writing into the clock's ring: [`arm`] it and it
    /// takes one sample after [`PROBE_PERIOD_NS`] of the thread's CPU time, then disables
    /// itself. The nearest on-CPU sample of a thread that was woken less than a clock period
    /// ago, at the cost of one sample.
    Probe,
    /// Context switches: a sample at every switch-out.
    Switch,
}

/// Opens `kind` for thread `tid` (any CPU). `period_ns` is the task clock's sampling period.
///
/// Without CAP_PERFMON, `kernel.perf_event_paranoid` = 2 allows user-space samples only: the
/// task clock is then opened again with `exclude_kernel` (ticks inside system calls are lost;
/// the switch event, which fires in the kernel, is refused and sleeping threads are read with
/// ptrace).
pub fn open(tid: u32, kind: Kind, period_ns: u64) -> Result<OwnedFd, nix::errno::Errno> {
    match open_with(tid, kind, period_ns, false) {
        Err(nix::errno::Errno::EACCES) if kind != Kind::Switch => {
            open_with(tid, kind, period_ns, true)
        }
        other => other,
    }
}

fn open_with(
    tid: u32,
    kind: Kind,
    period_ns: u64,
    exclude_kernel: bool,
) -> Result<OwnedFd, nix::errno::Errno> {
    let mut attr = perf_event_attr {
        size: std::mem::size_of::<perf_event_attr>() as u32,
        type_: PERF_TYPE_SOFTWARE,
        ..Default::default()
    };
    attr.sample_type = u64::from(
        PERF_SAMPLE_TID | PERF_SAMPLE_TIME | PERF_SAMPLE_REGS_USER | PERF_SAMPLE_STACK_USER,
    );
    attr.sample_regs_user = REGS_MASK;
    attr.set_use_clockid(1);
    attr.clockid = libc::CLOCK_MONOTONIC;
    attr.set_exclude_hv(1);
    attr.set_exclude_kernel(u64::from(exclude_kernel));
    match kind {
        Kind::Clock => {
            attr.config = u64::from(PERF_COUNT_SW_TASK_CLOCK);
            attr.__bindgen_anon_1.sample_period = period_ns.max(1);
            attr.sample_stack_user = CLOCK_STACK_BYTES;
            // Ticks that land in the kernel still carry the user registers and stack (the
            // kernel takes them from the task's saved user state), so kernel ticks are kept.
        }
        Kind::Probe => {
            attr.config = u64::from(PERF_COUNT_SW_TASK_CLOCK);
            attr.__bindgen_anon_1.sample_period = PROBE_PERIOD_NS;
            attr.sample_stack_user = CLOCK_STACK_BYTES;
            attr.set_disabled(1);
        }
        Kind::Switch => {
            attr.config = u64::from(PERF_COUNT_SW_CONTEXT_SWITCHES);
            attr.__bindgen_anon_1.sample_period = 1;
            attr.sample_stack_user = SWITCH_STACK_BYTES;
            // A switch happens in the kernel: excluding kernel samples would drop every one.
        }
    }
    // SAFETY: `attr` is a valid, fully initialised perf_event_attr whose `size` is its own size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const perf_event_attr,
            tid as libc::pid_t,
            -1 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
        )
    };
    if fd < 0 {
        return Err(nix::errno::Errno::last());
    }
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Sends the records of `event` into the ring buffer of `ring_owner` (PERF_EVENT_IOC_SET_OUTPUT):
/// both must be events of the same thread with the same clock.
pub fn share_ring(event: &OwnedFd, ring_owner: RawFd) -> Result<(), nix::errno::Errno> {
    // SAFETY: an ioctl on a perf event descriptor we own, naming another perf event descriptor.
    let r = unsafe { perf_event_open_sys::ioctls::SET_OUTPUT(event.as_raw_fd(), ring_owner) };
    if r < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// Arms a [`Kind::Probe`] event for one sample (PERF_EVENT_IOC_REFRESH 1).
pub fn arm(probe: &OwnedFd) -> Result<(), nix::errno::Errno> {
    // SAFETY: an ioctl on a perf event descriptor we own; the argument is a plain count.
    let r = unsafe { perf_event_open_sys::ioctls::REFRESH(probe.as_raw_fd(), 1) };
    if r < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// One parsed record.
#[derive(Debug)]
pub enum Record<'a> {
    /// A sample: thread, CLOCK_MONOTONIC time (ns), user registers (None for a sample with no
    /// user state, e.g. a kernel thread) and the copied user stack (starting at `regs.sp`).
    Sample {
        tid: u32,
        time_ns: u64,
        regs: Option<Regs>,
        stack: &'a [u8],
    },
    /// The kernel dropped this many records (the ring was full).
    Lost(u64),
    /// Any other record type.
    Other,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn u64(&mut self) -> Option<u64> {
        let b = self.bytes.get(self.pos..self.pos + 8)?;
        self.pos += 8;
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        Some(u64::from_ne_bytes(w))
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let b = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(b)
    }
}

/// Parses one record (header included) written with the sample type of [`open`]. Malformed
/// records (sizes that do not add up) are `None`.
pub fn parse(record: &[u8]) -> Option<Record<'_>> {
    let mut c = Cursor {
        bytes: record,
        pos: 0,
    };
    let header = c.u64()?;
    let ty = (header & 0xffff_ffff) as u32;
    if ty == PERF_RECORD_LOST {
        let _id = c.u64()?;
        return Some(Record::Lost(c.u64()?));
    }
    if ty != PERF_RECORD_SAMPLE {
        return Some(Record::Other);
    }
    let pid_tid = c.u64()?;
    // PERF_SAMPLE_TID: u32 pid, u32 tid, in memory order.
    let tid = (pid_tid >> 32) as u32;
    let time_ns = c.u64()?;
    let abi = c.u64()?;
    let regs = if abi == 0 {
        None
    } else {
        Some(decode_regs(&mut c)?)
    };
    let size = c.u64()? as usize;
    let stack = if size == 0 {
        &[][..]
    } else {
        let data = c.bytes(size)?;
        let dyn_size = c.u64()? as usize;
        &data[..dyn_size.min(size)]
    };
    Some(Record::Sample {
        tid,
        time_ns,
        regs,
        stack,
    })
}

#[cfg(target_arch = "x86_64")]
fn decode_regs(c: &mut Cursor<'_>) -> Option<Regs> {
    let bp = c.u64()?;
    let sp = c.u64()?;
    let ip = c.u64()?;
    Some(Regs {
        pc: ip,
        sp,
        fp: bp,
        lr: 0,
        interrupted_syscall: None,
    })
}

#[cfg(target_arch = "aarch64")]
fn decode_regs(c: &mut Cursor<'_>) -> Option<Regs> {
    let fp = c.u64()?;
    let lr = c.u64()?;
    let sp = c.u64()?;
    let pc = c.u64()?;
    Some(Regs {
        pc,
        sp,
        fp,
        lr,
        interrupted_syscall: None,
    })
}

/// CLOCK_MONOTONIC now, ns (the clock the events' times use).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the value we pass.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_record(tid: u32, time: u64, regs: [u64; 3], stack: &[u8], dyn_size: u64) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&((u64::from(tid) << 32) | 7).to_ne_bytes());
        body.extend_from_slice(&time.to_ne_bytes());
        body.extend_from_slice(&2u64.to_ne_bytes());
        for r in regs {
            body.extend_from_slice(&r.to_ne_bytes());
        }
        body.extend_from_slice(&(stack.len() as u64).to_ne_bytes());
        body.extend_from_slice(stack);
        body.extend_from_slice(&dyn_size.to_ne_bytes());
        let size = (body.len() + 8) as u64;
        let mut rec = (u64::from(PERF_RECORD_SAMPLE) | (size << 48))
            .to_ne_bytes()
            .to_vec();
        rec.extend_from_slice(&body);
        rec
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn parses_samples_and_rejects_short_ones() {
        let stack: Vec<u8> = (0..64).collect();
        let rec = sample_record(42, 1234, [0xb0, 0x5000, 0x401000], &stack, 40);
        match parse(&rec) {
            Some(Record::Sample {
                tid,
                time_ns,
                regs: Some(regs),
                stack: s,
            }) => {
                assert_eq!((tid, time_ns), (42, 1234));
                assert_eq!((regs.pc, regs.sp, regs.fp), (0x401000, 0x5000, 0xb0));
                assert_eq!(s, &stack[..40]);
            }
            other => panic!("{other:?}"),
        }
        // Every truncation of the record is rejected, never read past its end.
        for n in 0..rec.len() {
            assert!(parse(&rec[..n]).is_none(), "accepted {n} bytes");
        }
        let lost = [
            (u64::from(PERF_RECORD_LOST) | (24 << 48)).to_ne_bytes(),
            1u64.to_ne_bytes(),
            9u64.to_ne_bytes(),
        ]
        .concat();
        assert!(matches!(parse(&lost), Some(Record::Lost(9))));
    }
}
