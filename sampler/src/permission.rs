//! Saying *why* the kernel refused to let us trace a thread, in one line.
//!
//! `PTRACE_SEIZE` answers a refusal with a bare `EPERM`, whatever the cause. The causes differ in
//! what an operator must do, so this module tells them apart from what `/proc` shows:
//!
//! 1. another tracer (gdb, strace, another profiler) is attached: `TracerPid` in `status`;
//! 2. Yama (`kernel.yama.ptrace_scope`): 1 = only descendants, 2 = only CAP_SYS_PTRACE,
//!    3 = nobody, until reboot;
//! 3. another user's process without `CAP_SYS_PTRACE`;
//! 4. a non-dumpable process (setuid, `PR_SET_DUMPABLE=0`) without `CAP_SYS_PTRACE`: `/proc/<pid>`
//!    files then belong to root although the process does not;
//! 5. otherwise a security module (SELinux `deny_ptrace`, AppArmor) or seccomp.

use super::proc;
use std::os::unix::fs::MetadataExt;

/// Bit of `CAP_SYS_PTRACE` in the capability masks.
const CAP_SYS_PTRACE: u32 = 19;

/// Whether this process holds `CAP_SYS_PTRACE` in its effective set.
pub fn have_cap_sys_ptrace() -> bool {
    effective_caps().is_some_and(|caps| caps & (1 << CAP_SYS_PTRACE) != 0)
}

fn effective_caps() -> Option<u64> {
    let text = proc::read_small(std::path::Path::new("/proc/self/status")).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

/// One line explaining why tracing thread `tid` of `pid` was refused.
pub fn explain_denied(pid: u32, tid: u32) -> String {
    let status = proc::task_status(pid, tid)
        .or_else(|_| proc::process_status(pid))
        .unwrap_or_default();
    if status.tracer_pid != 0 && !super::ptrace::is_own_tracer_thread(status.tracer_pid) {
        let comm = proc::process_comm(status.tracer_pid).unwrap_or_else(|_| "?".into());
        return format!(
            "another tracer is attached (TracerPid {} {comm:?}); a thread can have only one tracer, \
             detach it (quit gdb/strace/the other profiler) first",
            status.tracer_pid
        );
    }
    let cap_ptrace = have_cap_sys_ptrace();
    let yama = proc::yama_ptrace_scope();
    if yama == Some(3) {
        return "kernel.yama.ptrace_scope=3 forbids every ptrace attach, even for root, until reboot"
            .into();
    }
    // Another user's process is refused whatever Yama says below: name the first obstacle.
    let euid = nix::unistd::geteuid().as_raw();
    if !cap_ptrace && status.uids[..3].iter().any(|&u| u != euid) {
        return format!(
            "the process belongs to uid {} and the agent runs as uid {euid} without CAP_SYS_PTRACE; \
             run it as that user or as root",
            status.uids[0]
        );
    }
    match yama {
        Some(2) if !cap_ptrace => {
            return "kernel.yama.ptrace_scope=2 lets only CAP_SYS_PTRACE trace; run the agent as root or \
                    grant it CAP_SYS_PTRACE"
                .into();
        }
        Some(1) if !cap_ptrace => {
            return "kernel.yama.ptrace_scope=1 allows tracing only descendants; grant the agent \
                    CAP_SYS_PTRACE or set `sysctl kernel.yama.ptrace_scope=0`"
                .into();
        }
        _ => {}
    }
    let owner = std::fs::metadata(proc::process_dir(pid))
        .map(|m| m.uid())
        .unwrap_or(0);
    if !cap_ptrace && owner == 0 && status.uids[0] != 0 {
        return "the process is not dumpable (setuid/setgid or PR_SET_DUMPABLE=0); tracing it needs \
                CAP_SYS_PTRACE"
            .into();
    }
    "ptrace returned EPERM although uid, capabilities and Yama allow it: a security module \
     (SELinux deny_ptrace, AppArmor) or a seccomp filter forbids it"
        .into()
}
