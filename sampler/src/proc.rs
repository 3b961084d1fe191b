//! Reading processes and threads from `/proc`, without stopping anything.
//!
//! Everything the sampler knows about a thread *besides* its stack comes from here: its name
//! (`comm`), its scheduler state (`stat`), whether a sleeping thread sleeps with a timeout
//! (`syscall`), who owns the process and whether someone already traces it (`status`).
//!
//! Two pitfalls shape this module:
//!
//! * `stat`'s second field is the comm in parentheses, and a comm may itself contain `)` and
//!   spaces (`prctl(PR_SET_NAME, "a) b")`). The fields after it are therefore found after the
//!   **last** `)` of the line, never by splitting on spaces from the start.
//! * Every read races with the thread exiting. A vanished file is a normal answer ("the thread
//!   is gone"), so the functions return `io::Result` and the callers treat `NotFound`/`ESRCH`
//!   as "skip this thread", never as a fault of the run.
//!
//! These reads cost 7–10 µs each, so the sampler does them *outside* the window in which a
//! thread is stopped.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Largest `/proc` text file this module reads (`status` is ~1.5 KiB, `stat` ~300 bytes). Reads
/// are bounded so a hostile or unusual file can not make the agent allocate without limit.
const MAX_PROC_FILE: u64 = 64 * 1024;

/// The length the kernel truncates a comm to (`TASK_COMM_LEN` - 1).
pub const COMM_MAX_LEN: usize = 15;

/// `/proc/<pid>` (the process).
pub fn process_dir(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

/// `/proc/<pid>/task/<tid>` (one thread).
pub fn task_dir(pid: u32, tid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/task/{tid}"))
}

/// Reads a small `/proc` file as text.
pub fn read_small(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let file = fs::File::open(path)?;
    let mut text = String::new();
    file.take(MAX_PROC_FILE).read_to_string(&mut text)?;
    Ok(text)
}

/// The fields of `/proc/<pid>/task/<tid>/stat` the sampler uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskStat {
    /// Scheduler state letter (`R`, `S`, `D`, `T`, `t`, `Z`, `X`, `I`, ...).
    pub state: char,
    /// User-mode CPU time in clock ticks.
    pub utime: u64,
    /// Kernel-mode CPU time in clock ticks.
    pub stime: u64,
    /// Start time after boot in clock ticks: together with the pid it identifies a process
    /// across pid reuse.
    pub starttime: u64,
}

/// Parses the text of a `stat` file (see the module docs for why it splits at the last `)`).
pub fn parse_stat(text: &str) -> Option<TaskStat> {
    let close = text.rfind(')')?;
    let mut fields = text.get(close + 1..)?.split_ascii_whitespace();
    // Field 3 (state) is the first after the comm; utime/stime are fields 14/15, starttime 22.
    let state = fields.next()?.chars().next()?;
    let rest: Vec<&str> = fields.collect();
    // `rest[0]` is field 4 (ppid), so field N is `rest[N - 4]`.
    let field = |n: usize| rest.get(n - 4).and_then(|f| f.parse::<u64>().ok());
    Some(TaskStat {
        state,
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
    })
}

/// Reads the `stat` of one thread.
pub fn task_stat(pid: u32, tid: u32) -> io::Result<TaskStat> {
    let text = read_small(&task_dir(pid, tid).join("stat"))?;
    parse_stat(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))
}

/// Reads the `stat` of a process (its main thread, plus the process start time).
pub fn process_stat(pid: u32) -> io::Result<TaskStat> {
    let text = read_small(&process_dir(pid).join("stat"))?;
    parse_stat(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))
}

/// A thread's name, without the trailing newline.
pub fn task_comm(pid: u32, tid: u32) -> io::Result<String> {
    let text = read_small(&task_dir(pid, tid).join("comm"))?;
    Ok(text.trim_end_matches('\n').to_string())
}

/// A process's name (the comm of its main thread).
pub fn process_comm(pid: u32) -> io::Result<String> {
    let text = read_small(&process_dir(pid).join("comm"))?;
    Ok(text.trim_end_matches('\n').to_string())
}

/// The thread ids of a process, ascending.
pub fn list_tids(pid: u32) -> io::Result<Vec<u32>> {
    let mut tids: Vec<u32> = fs::read_dir(process_dir(pid).join("task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// Every process id on the host (numeric entries of `/proc`).
pub fn list_pids() -> io::Result<Vec<u32>> {
    Ok(fs::read_dir("/proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// The fields of `/proc/<pid>/status` the agent uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcStatus {
    /// Thread group id: equals the pid for a process, differs when a tid was given.
    pub tgid: u32,
    /// Pid of the process tracing this one, 0 when none.
    pub tracer_pid: u32,
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
}

/// Parses the text of a `status` file.
pub fn parse_status(text: &str) -> ProcStatus {
    let mut st = ProcStatus::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Tgid" => st.tgid = value.parse().unwrap_or(0),
            "TracerPid" => st.tracer_pid = value.parse().unwrap_or(0),
            "Uid" => {
                for (slot, v) in st.uids.iter_mut().zip(value.split_ascii_whitespace()) {
                    *slot = v.parse().unwrap_or(u32::MAX);
                }
            }
            _ => {}
        }
    }
    st
}

/// Reads `/proc/<pid>/status`.
pub fn process_status(pid: u32) -> io::Result<ProcStatus> {
    Ok(parse_status(&read_small(&process_dir(pid).join("status"))?))
}

/// Reads `/proc/<pid>/task/<tid>/status`.
pub fn task_status(pid: u32, tid: u32) -> io::Result<ProcStatus> {
    Ok(parse_status(&read_small(
        &task_dir(pid, tid).join("status"),
    )?))
}

/// `kernel.yama.ptrace_scope`, or `None` when Yama is not built in.
pub fn yama_ptrace_scope() -> Option<u32> {
    read_small(Path::new("/proc/sys/kernel/yama/ptrace_scope"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// System call numbers that matter for telling a timed wait from an untimed one.
#[cfg(target_arch = "x86_64")]
mod nr {
    pub const POLL: u64 = 7;
    pub const SELECT: u64 = 23;
    pub const NANOSLEEP: u64 = 35;
    pub const RT_SIGTIMEDWAIT: u64 = 128;
    pub const FUTEX: u64 = 202;
    pub const IO_GETEVENTS: u64 = 208;
    pub const SEMTIMEDOP: u64 = 220;
    pub const CLOCK_NANOSLEEP: u64 = 230;
    pub const EPOLL_WAIT: u64 = 232;
    pub const MQ_TIMEDSEND: u64 = 242;
    pub const MQ_TIMEDRECEIVE: u64 = 243;
    pub const PSELECT6: u64 = 270;
    pub const PPOLL: u64 = 271;
    pub const EPOLL_PWAIT: u64 = 281;
    pub const RECVMMSG: u64 = 299;
    pub const IO_PGETEVENTS: u64 = 333;
    pub const EPOLL_PWAIT2: u64 = 441;
    pub const FUTEX_WAITV: u64 = 449;
    pub const RESTART_SYSCALL: u64 = 219;
}

/// System call numbers that matter for telling a timed wait from an untimed one.
#[cfg(target_arch = "aarch64")]
mod nr {
    // aarch64 has no poll, select, epoll_wait (only the p* variants); use impossible numbers.
    pub const POLL: u64 = u64::MAX;
    pub const SELECT: u64 = u64::MAX - 1;
    pub const EPOLL_WAIT: u64 = u64::MAX - 2;
    pub const IO_GETEVENTS: u64 = 4;
    pub const EPOLL_PWAIT: u64 = 22;
    pub const PSELECT6: u64 = 72;
    pub const PPOLL: u64 = 73;
    pub const FUTEX: u64 = 98;
    pub const NANOSLEEP: u64 = 101;
    pub const CLOCK_NANOSLEEP: u64 = 115;
    pub const RT_SIGTIMEDWAIT: u64 = 137;
    pub const MQ_TIMEDSEND: u64 = 182;
    pub const MQ_TIMEDRECEIVE: u64 = 183;
    pub const SEMTIMEDOP: u64 = 192;
    pub const RECVMMSG: u64 = 243;
    pub const IO_PGETEVENTS: u64 = 292;
    pub const EPOLL_PWAIT2: u64 = 441;
    pub const FUTEX_WAITV: u64 = 449;
    pub const RESTART_SYSCALL: u64 = 128;
}

/// Whether the blocking system call described by a `/proc/.../syscall` line waits with a
/// timeout.
///
/// The line is `running`, `-1 SP PC` (blocked outside a system call), or `NR A0 .. A5 SP PC` in
/// hex. Only the last form can be a timed wait: sleeps (nanosleep, clock_nanosleep), futex waits
/// with a timeout pointer, poll/epoll waits with a timeout >= 0, select/pselect with a timeout
/// pointer, and the other `*timed*` calls.
pub fn syscall_waits_with_timeout(line: &str) -> bool {
    let mut parts = line.split_ascii_whitespace();
    let Some(Ok(number)) = parts.next().map(|n| n.parse::<u64>()) else {
        return false;
    };
    let mut args = [0u64; 6];
    for (slot, a) in args.iter_mut().zip(parts) {
        *slot = u64::from_str_radix(a.trim_start_matches("0x"), 16).unwrap_or(0);
    }
    syscall_is_timed_wait(number, &args)
}

/// Whether system call `number` with `args` is a wait with a timeout (see
/// [`syscall_waits_with_timeout`]).
pub fn syscall_is_timed_wait(number: u64, args: &[u64; 6]) -> bool {
    let arg = |i: usize| args[i];
    // An `int` timeout (milliseconds) lives in the low 32 bits of its register.
    let int_timeout_set = |i: usize| (arg(i) as u32 as i32) >= 0;
    match number {
        // The kernel restarts a sleep interrupted by a signal or a ptrace stop through
        // restart_syscall only when a remaining timeout must be recomputed (nanosleep, poll,
        // futex with a timeout, ...); untimed waits re-execute the original call instead.
        nr::NANOSLEEP | nr::CLOCK_NANOSLEEP | nr::RESTART_SYSCALL => true,
        nr::FUTEX => {
            // FUTEX_CMD_MASK drops FUTEX_PRIVATE_FLAG (128) and FUTEX_CLOCK_REALTIME (256).
            const FUTEX_WAIT: u64 = 0;
            const FUTEX_LOCK_PI: u64 = 6;
            const FUTEX_WAIT_BITSET: u64 = 9;
            const FUTEX_WAIT_REQUEUE_PI: u64 = 11;
            const FUTEX_LOCK_PI2: u64 = 13;
            let op = arg(1) & !(128 | 256);
            matches!(
                op,
                FUTEX_WAIT
                    | FUTEX_LOCK_PI
                    | FUTEX_WAIT_BITSET
                    | FUTEX_WAIT_REQUEUE_PI
                    | FUTEX_LOCK_PI2
            ) && arg(3) != 0
        }
        nr::FUTEX_WAITV => arg(3) != 0,
        nr::POLL => int_timeout_set(2),
        nr::EPOLL_WAIT | nr::EPOLL_PWAIT => int_timeout_set(3),
        nr::PPOLL | nr::RT_SIGTIMEDWAIT => arg(2) != 0,
        nr::EPOLL_PWAIT2 | nr::SEMTIMEDOP => arg(3) != 0,
        nr::SELECT | nr::PSELECT6 | nr::MQ_TIMEDSEND | nr::MQ_TIMEDRECEIVE | nr::RECVMMSG => {
            arg(4) != 0
        }
        nr::IO_GETEVENTS | nr::IO_PGETEVENTS => arg(4) != 0,
        _ => false,
    }
}

/// A thread's `stat` and, when it sleeps (`S`), whether that wait has a timeout, read so that
/// the two agree.
///
/// They are two files read one after the other: a thread that wakes between the reads shows
/// `S` in `stat` and `running` in `syscall`, and a timed sleep (a duty-cycled worker's
/// `clock_nanosleep`) was filed as an untimed wait, WAITING instead of TIMED_WAITING, in about
/// 1 % of such a worker's samples. Such a pair is read again, a few times at most; the last
/// `stat` read is the one returned. An unreadable `syscall` (thread gone, no permission) counts
/// as "no timeout".
pub fn task_stat_and_timed(pid: u32, tid: u32) -> io::Result<(TaskStat, bool)> {
    let dir = task_dir(pid, tid);
    stat_and_timed_with(|| task_stat(pid, tid), || read_small(&dir.join("syscall")))
}

/// [`task_stat_and_timed`] over the two reads, so the retry can be tested with scripted answers.
fn stat_and_timed_with(
    mut read_stat: impl FnMut() -> io::Result<TaskStat>,
    mut read_syscall: impl FnMut() -> io::Result<String>,
) -> io::Result<(TaskStat, bool)> {
    /// Reads of a pair that disagreed before the sleep is taken as untimed.
    const ATTEMPTS: usize = 3;
    let mut stat = read_stat()?;
    for _ in 0..ATTEMPTS {
        if stat.state != 'S' {
            return Ok((stat, false));
        }
        match read_syscall() {
            // Woke between the two reads: its state is no longer the one `stat` showed.
            Ok(line) if line.trim() == "running" => stat = read_stat()?,
            Ok(line) => return Ok((stat, syscall_waits_with_timeout(line.trim()))),
            Err(_) => return Ok((stat, false)),
        }
    }
    Ok((stat, false))
}

/// The kernel stack of a thread (`/proc/<pid>/task/<tid>/stack`, root only), innermost first,
/// as bare function names (`do_nanosleep`), or empty when unreadable.
pub fn task_kernel_stack(pid: u32, tid: u32) -> Vec<String> {
    let Ok(text) = read_small(&task_dir(pid, tid).join("stack")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            // "[<0>] do_nanosleep+0x6d/0x160"
            let sym = line.split_once("] ").map(|(_, s)| s).unwrap_or(line).trim();
            let name = sym.split('+').next().unwrap_or(sym).trim();
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_splits_after_the_last_paren() {
        let text = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 2 0 12345 0 0";
        let st = parse_stat(text).unwrap();
        assert_eq!(st.state, 'S');
        assert_eq!(st.utime, 7);
        assert_eq!(st.stime, 3);
        assert_eq!(st.starttime, 12345);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn status_fields() {
        let st = parse_status(
            "Name:\tx\nTgid:\t7\nPid:\t9\nTracerPid:\t3\nUid:\t1000\t1001\t1002\t1003\n",
        );
        assert_eq!(
            st,
            ProcStatus {
                tgid: 7,
                tracer_pid: 3,
                uids: [1000, 1001, 1002, 1003]
            }
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_thread_that_wakes_between_stat_and_syscall_is_read_again() {
        let stat = |state| TaskStat {
            state,
            utime: 0,
            stime: 0,
            starttime: 1,
        };
        let nanosleep = "230 0x0 0x0 0x7f00 0x7f10 0x0 0x0 0x7ff 0x7f1";
        // `S`, then `running` (it woke), then asleep again in its timed sleep: timed.
        let mut stats = vec![stat('S'), stat('S')].into_iter();
        let mut lines = vec!["running\n", nanosleep].into_iter();
        let (read, timed) = stat_and_timed_with(
            || Ok(stats.next().unwrap()),
            || Ok(lines.next().unwrap().to_string()),
        )
        .unwrap();
        assert_eq!((read.state, timed), ('S', true));
        // `S`, then `running`, then `R`: it is running, and not waiting at all.
        let mut stats = vec![stat('S'), stat('R')].into_iter();
        let (read, timed) =
            stat_and_timed_with(|| Ok(stats.next().unwrap()), || Ok("running".to_string()))
                .unwrap();
        assert_eq!((read.state, timed), ('R', false));
        // A thread that keeps flipping gives up after a few reads, untimed, never looping.
        let mut reads = 0;
        let (_, timed) = stat_and_timed_with(
            || {
                reads += 1;
                Ok(stat('S'))
            },
            || Ok("running".to_string()),
        )
        .unwrap();
        assert!(!timed);
        assert!(reads <= 4, "{reads} stat reads");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn timed_waits_are_recognised() {
        assert!(!syscall_waits_with_timeout("running"));
        assert!(!syscall_waits_with_timeout("-1 0x7ffd 0x4005"));
        assert!(syscall_waits_with_timeout(
            "219 0x0 0x0 0x0 0x0 0x0 0x0 0x7ff 0x7f1"
        ));
        assert!(syscall_waits_with_timeout(
            "230 0x0 0x0 0x7f00 0x7f10 0x0 0x0 0x7ff 0x7f1"
        ));
        // pthread_cond_wait: FUTEX_WAIT_BITSET|PRIVATE, NULL timeout.
        assert!(!syscall_waits_with_timeout(
            "202 0x5600 0x89 0x0 0x0 0x0 0xffffffff 0x7ff 0x7f1"
        ));
        // pthread_cond_timedwait: same with a timeout pointer.
        assert!(syscall_waits_with_timeout(
            "202 0x5600 0x89 0x0 0x7f00 0x0 0xffffffff 0x7ff 0x7f1"
        ));
        // epoll_wait(fd, events, n, -1) vs timeout 100.
        assert!(!syscall_waits_with_timeout(
            "232 0x3 0x7f00 0x10 0xffffffff 0x0 0x0 0x7ff 0x7f1"
        ));
        assert!(syscall_waits_with_timeout(
            "232 0x3 0x7f00 0x10 0x64 0x0 0x0 0x7ff 0x7f1"
        ));
        // poll(fds, 1, -1) sign-extended.
        assert!(!syscall_waits_with_timeout(
            "7 0x7f00 0x1 0xffffffffffffffff 0x0 0x0 0x0 0x7ff 0x7f1"
        ));
    }
}
