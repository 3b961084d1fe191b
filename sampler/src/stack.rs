//! Registers and a copy of the top of a stopped thread's stack.
//!
//! Unwinding needs three registers (instruction pointer, stack pointer, frame pointer; on
//! aarch64 also the link register) and the stack memory above the stack pointer. Both are read
//! while the thread is stopped:
//!
//! * registers with one `PTRACE_GETREGS` (≈1.5 µs);
//! * memory with one `process_vm_readv` (≈4 µs for 16 KiB), never `PTRACE_PEEKDATA` (one
//!   system call per 8 bytes). The remote range is split into page-sized pieces so that the
//!   end of the stack mapping yields a short read instead of a failure: the kernel copies
//!   iovec by iovec and stops at the first one it can not read.
//!
//! A [`StackCopy`] answers the unwinder's word reads from the copy. While the thread is still
//! stopped ("live") it may copy further pages on demand, so a deep stack is followed past the
//! first window; after the thread was released it only answers from what it already has.

use nix::sys::uio::{RemoteIoVec, process_vm_readv};
use nix::unistd::Pid;
use std::io::IoSliceMut;

/// Bytes copied from the stack pointer up in one go. Most thread stacks of interest are a few
/// KiB deep; deeper ones are extended on demand while the thread is still stopped.
pub const INITIAL_COPY: usize = 16 * 1024;

/// The most stack memory read for one sample (a bound for runaway or corrupt stacks).
pub const MAX_COPY: usize = 1024 * 1024;

const PAGE: u64 = 4096;

/// The registers the unwinder needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Regs {
    /// Instruction pointer.
    pub pc: u64,
    /// Stack pointer.
    pub sp: u64,
    /// Frame pointer (rbp / x29).
    pub fp: u64,
    /// Link register (aarch64 x30; 0 on x86_64).
    pub lr: u64,
    /// The blocking system call (number, arguments) the thread was in when it stopped, if the
    /// stop interrupted one (it will be restarted): the thread was *waiting*, not running.
    pub interrupted_syscall: Option<(u64, [u64; 6])>,
}

/// Reads the registers of a stopped tracee.
#[cfg(target_arch = "x86_64")]
pub fn read_regs(tid: Pid) -> nix::Result<Regs> {
    let r = nix::sys::ptrace::getregs(tid)?;
    // A stop inside a blocking system call leaves orig_rax = the call and rax = one of the
    // kernel's -ERESTART* codes (ERESTARTSYS 512, ERESTARTNOINTR 513, ERESTARTNOHAND 514,
    // ERESTART_RESTARTBLOCK 516): the call is re-entered when the thread resumes.
    //
    // If an earlier stop already made the kernel rewind the call for its restart, the thread
    // sits on the `syscall` instruction again (rip rewound by 2, rax = the call number, or
    // restart_syscall for calls with a remaining timeout): it is still waiting, just not yet
    // back inside the kernel. Check the instruction bytes to be sure (one tiny read).
    const RESTART_SYSCALL: u64 = 219;
    let args = [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9];
    let in_call = r.orig_rax as i64 >= 0;
    let restarting = matches!(r.rax as i64, -516 | -514 | -513 | -512);
    let interrupted_syscall = if in_call && restarting {
        Some((r.orig_rax, args))
    } else if in_call
        && (r.rax == r.orig_rax || r.rax == RESTART_SYSCALL)
        && at_syscall_insn(tid, r.rip)
    {
        Some((r.rax, args))
    } else {
        None
    };
    Ok(Regs {
        pc: r.rip,
        sp: r.rsp,
        fp: r.rbp,
        lr: 0,
        interrupted_syscall,
    })
}

/// Whether the two bytes at `pc` are x86_64's `syscall` instruction (0f 05).
#[cfg(target_arch = "x86_64")]
fn at_syscall_insn(tid: Pid, pc: u64) -> bool {
    read_memory(tid, pc, 2) == [0x0f, 0x05]
}

/// Reads the registers of a stopped tracee.
#[cfg(target_arch = "aarch64")]
pub fn read_regs(tid: Pid) -> nix::Result<Regs> {
    let r = nix::sys::ptrace::getregs(tid)?;
    Ok(Regs {
        pc: r.pc,
        sp: r.sp,
        fp: r.regs[29],
        lr: r.regs[30],
        interrupted_syscall: None,
    })
}

/// A copy of stack memory `[base, base + len)` of one thread.
///
/// The buffer is kept at its full size (zeroed once when allocated) and reused across samples,
/// so copying costs only the system call, not a clear-and-grow of the buffer each time.
#[derive(Debug, Default, Clone)]
pub struct StackCopy {
    /// Address of `buf[0]`.
    pub base: u64,
    /// Backing memory; only `buf[..len]` holds copied bytes.
    buf: Vec<u8>,
    /// Bytes copied so far.
    len: usize,
    /// The copy hit the end of readable memory: reads beyond it fail without another try.
    pub at_end: bool,
}

impl StackCopy {
    /// Starts a copy at `sp` (reusing `buf`'s memory).
    pub fn new(sp: u64, buf: Vec<u8>) -> StackCopy {
        StackCopy {
            base: sp & !7,
            buf,
            len: 0,
            at_end: false,
        }
    }

    /// A finished copy of `bytes`, the memory from `base` up (a perf sample's user stack),
    /// stored in `buf`'s memory. Reads outside it fail like unreadable memory.
    pub fn from_bytes(base: u64, bytes: &[u8], mut buf: Vec<u8>) -> StackCopy {
        buf.clear();
        buf.extend_from_slice(bytes);
        StackCopy {
            base,
            len: buf.len(),
            buf,
            at_end: true,
        }
    }

    /// The copied bytes.
    #[cfg(test)]
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Gives the backing buffer back for reuse.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// Copies up to `len` more bytes after what is already there from thread `tid`. Returns the
    /// number of bytes added.
    pub fn extend_from(&mut self, tid: Pid, len: usize) -> usize {
        if self.at_end || self.len >= MAX_COPY {
            return 0;
        }
        let len = len.min(MAX_COPY - self.len);
        let old = self.len;
        if self.buf.len() < old + len {
            self.buf.resize((old + len).max(INITIAL_COPY), 0);
        }
        let start = self.base + old as u64;
        let end = start + len as u64;
        // Page-sized remote pieces (the first one up to the next page boundary), on the stack
        // for the common case.
        let mut remote: [RemoteIoVec; 1 + INITIAL_COPY / PAGE as usize] =
            [RemoteIoVec { base: 0, len: 0 }; 1 + INITIAL_COPY / PAGE as usize];
        let mut got_total = 0;
        let mut addr = start;
        while addr < end {
            let mut n = 0;
            let chunk_start = addr;
            while addr < end && n < remote.len() {
                let piece_end = (((addr / PAGE) + 1) * PAGE).min(end);
                remote[n] = RemoteIoVec {
                    base: addr as usize,
                    len: (piece_end - addr) as usize,
                };
                n += 1;
                addr = piece_end;
            }
            let want = (addr - chunk_start) as usize;
            let from = old + got_total;
            let got = {
                let mut local = [IoSliceMut::new(&mut self.buf[from..from + want])];
                process_vm_readv(tid, &mut local, &remote[..n]).unwrap_or(0)
            };
            got_total += got;
            if got < want {
                self.at_end = true;
                break;
            }
        }
        self.len = old + got_total;
        got_total
    }

    /// The 8-byte word at `addr`, from the copy; when `live` is given (the thread is still
    /// stopped) the copy is extended to cover `addr` first.
    pub fn read_word(&mut self, addr: u64, live: Option<Pid>) -> Result<u64, ()> {
        let off = addr.checked_sub(self.base).ok_or(())? as usize;
        if off + 8 > self.len {
            let tid = live.ok_or(())?;
            let want = (off + 8 - self.len).next_multiple_of(INITIAL_COPY);
            self.extend_from(tid, want);
            if off + 8 > self.len {
                return Err(());
            }
        }
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.buf[off..off + 8]);
        Ok(u64::from_le_bytes(w))
    }
}

/// Reads `len` bytes of another process's memory at `addr` (used for the vDSO image). Returns
/// what could be read.
pub fn read_memory(pid: Pid, addr: u64, len: usize) -> Vec<u8> {
    let mut copy = StackCopy {
        base: addr,
        buf: vec![0; len],
        len: 0,
        at_end: false,
    };
    copy.extend_from(pid, len);
    let n = copy.len;
    let mut bytes = copy.into_buffer();
    bytes.truncate(n);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_own_stack_and_stops_at_the_end() {
        let marker: u64 = 0x1234_5678_9abc_def0;
        let addr = &marker as *const u64 as u64;
        let me = Pid::this();
        let mut copy = StackCopy::new(addr, Vec::new());
        assert_eq!(copy.read_word(addr, Some(me)), Ok(marker));
        // Reads past what was copied fail once the thread is no longer "live".
        let beyond = copy.base + copy.bytes().len() as u64 + 64;
        assert_eq!(copy.read_word(beyond, None), Err(()));
        assert_eq!(copy.read_word(addr - 8 * 1024 * 1024, Some(me)), Err(()));
        assert!(read_memory(me, 0, 16).is_empty());
    }
}
