//! Which threads to sample: resolves a selector (a process by pid or name; its threads by tids, a
//! thread-name regex, or all) into concrete threads, and enforces the agent's allow-list.
//!
//! A selector names *what the user means* ("the threads called `source-.*` of the process
//! `worker`"); [`resolve`] turns it into *what exists now* (pid 4242, tids 4250 and 4251). The
//! sampler resolves again before every sample round, because threads come and go and a process
//! named by its comm may have been restarted under a new pid.
//!
//! The allow-list ([`AccessPolicy`]) is checked on every resolution, so a pid that is reused by
//! another user's program between two requests is refused, not sampled.

use crate::SamplerError;
use crate::proc;

/// Longest thread-name pattern accepted (bytes). Patterns may come from the network (the agent's
/// gRPC service); a bound keeps compilation cheap.
pub const MAX_THREAD_NAME_PATTERN: usize = 1024;

/// Most tids one selector may list.
pub const MAX_TIDS: usize = 4096;

/// The reason of every allow-list refusal: the same words whoever the process is.
pub const OUTSIDE_ALLOW_LIST: &str =
    "outside this agent's allow-list (the operator widens it with --allow-user / --allow-comm)";

/// Memory the compiled thread-name regex may use (bytes).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A process, by id or by kernel name (`/proc/<pid>/comm`, re-resolved at every run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessRef {
    /// By pid.
    Pid(u32),
    /// By comm name.
    Name(String),
}

/// What to sample for one subtask.
#[derive(Debug, Clone)]
pub struct ThreadSelector {
    /// The process.
    pub process: ProcessRef,
    /// Threads by tid (empty: not selected by tid).
    pub tids: Vec<u32>,
    /// Threads whose comm matches this regex as a whole (None: not selected by name). Build it
    /// with [`ThreadSelector::compile_thread_name`] so it is anchored and size-limited.
    pub thread_name: Option<regex::Regex>,
}

impl ThreadSelector {
    /// Every thread of process `pid`.
    pub fn pid(pid: u32) -> Self {
        ThreadSelector {
            process: ProcessRef::Pid(pid),
            tids: Vec::new(),
            thread_name: None,
        }
    }

    /// Compiles a thread-name pattern so that it must match the *whole* name (`spin-1` does not
    /// select `spin-10`), with bounded size, as the wire contract says.
    pub fn compile_thread_name(pattern: &str) -> Result<regex::Regex, SamplerError> {
        if pattern.len() > MAX_THREAD_NAME_PATTERN {
            return Err(SamplerError::InvalidArgument(format!(
                "thread name pattern is {} bytes long; at most {MAX_THREAD_NAME_PATTERN} allowed",
                pattern.len()
            )));
        }
        regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| {
                let first_line = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("invalid")
                    .trim()
                    .to_string();
                SamplerError::InvalidArgument(format!(
                    "bad thread name pattern {pattern:?}: {first_line}"
                ))
            })
    }

    /// Whether a thread with this tid and name is selected.
    pub fn selects(&self, tid: u32, name: &str) -> bool {
        (self.tids.is_empty() || self.tids.contains(&tid))
            && self.thread_name.as_ref().is_none_or(|re| re.is_match(name))
    }

    /// A short human description ("pid 42", "process \"worker\"") for messages.
    pub fn describe_process(&self) -> String {
        match &self.process {
            ProcessRef::Pid(pid) => format!("pid {pid}"),
            ProcessRef::Name(name) => format!("process named {name:?}"),
        }
    }
}

/// Who may be sampled.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    /// Anything the operating system lets us trace.
    Everything,
    /// Processes whose every uid is listed, or whose comm is listed.
    Listed { uids: Vec<u32>, comms: Vec<String> },
}

/// Which processes may be sampled.
///
/// The long-running agent answers requests from the network, so by default it samples only
/// processes of its own user even when it runs as root; operators widen that with
/// `--allow-user` / `--allow-comm`. The one-shot CLI is run by a person at a shell and relies on
/// the kernel's own ptrace checks instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    allowed: Allowed,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        AccessPolicy::own_user()
    }
}

impl AccessPolicy {
    /// No restriction (the one-shot `sample` command relies on the OS's own permission checks).
    pub fn unrestricted() -> Self {
        AccessPolicy {
            allowed: Allowed::Everything,
        }
    }

    /// Only processes of the agent's own (effective) user: the agent's default.
    pub fn own_user() -> Self {
        AccessPolicy {
            allowed: Allowed::Listed {
                uids: vec![nix::unistd::geteuid().as_raw()],
                comms: Vec::new(),
            },
        }
    }

    /// Processes of the listed users (names or numeric uids) or with the listed comms. A process
    /// is allowed if its uid OR its comm is listed. An unknown user name is an error, so a typo
    /// does not silently allow nothing.
    pub fn new(users: &[String], comms: &[String]) -> Result<Self, SamplerError> {
        let mut uids = Vec::with_capacity(users.len());
        for user in users {
            let user = user.trim();
            if let Ok(uid) = user.parse::<u32>() {
                uids.push(uid);
                continue;
            }
            match nix::unistd::User::from_name(user) {
                Ok(Some(u)) => uids.push(u.uid.as_raw()),
                Ok(None) => {
                    return Err(SamplerError::InvalidArgument(format!(
                        "allow-list: no user named {user:?}"
                    )));
                }
                Err(e) => {
                    return Err(SamplerError::InvalidArgument(format!(
                        "allow-list: looking up user {user:?}: {e}"
                    )));
                }
            }
        }
        let mut listed = Vec::with_capacity(comms.len());
        for comm in comms {
            if comm.is_empty() {
                return Err(SamplerError::InvalidArgument(
                    "allow-list: empty comm name".into(),
                ));
            }
            listed.push(truncate_comm(comm).to_string());
        }
        Ok(AccessPolicy {
            allowed: Allowed::Listed {
                uids,
                comms: listed,
            },
        })
    }

    /// Whether `pid` may be sampled: `PermissionDenied` with the reason if not, `NoSuchProcess`
    /// if it does not exist. The agent never samples itself (a tracer can not stop its own
    /// threads, and an agent reading its own memory on request is a leak).
    pub fn check(&self, pid: u32) -> Result<(), SamplerError> {
        if pid == std::process::id() {
            return Err(SamplerError::PermissionDenied {
                pid,
                reason: "that is the agent itself; it never samples its own process".into(),
            });
        }
        let Allowed::Listed { uids, comms } = &self.allowed else {
            return if proc::process_dir(pid).exists() {
                Ok(())
            } else {
                Err(SamplerError::NoSuchProcess(format!("pid {pid}")))
            };
        };
        let status = proc::process_status(pid).map_err(|e| gone_or_io(pid, e))?;
        // The kernel's own rule: another user's process needs all of real/effective/saved uid.
        if status.uids[..3].iter().all(|uid| uids.contains(uid)) {
            return Ok(());
        }
        let comm = proc::process_comm(pid).map_err(|e| gone_or_io(pid, e))?;
        if comms.contains(&comm) {
            return Ok(());
        }
        // Say *that* it is refused, never what the list holds nor who the process is: this
        // answer goes to whoever called the agent.
        Err(SamplerError::PermissionDenied {
            pid,
            reason: OUTSIDE_ALLOW_LIST.into(),
        })
    }
}

/// A selector resolved to concrete threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTarget {
    /// The process id.
    pub pid: u32,
    /// The process's comm.
    pub comm: String,
    /// Selected threads: (tid, name), ascending by tid. May be empty when no thread matches
    /// right now (the process exists, the threads do not).
    pub threads: Vec<(u32, String)>,
}

/// Resolves `sel` now, checking `policy`.
pub fn resolve(
    sel: &ThreadSelector,
    policy: &AccessPolicy,
) -> Result<ResolvedTarget, SamplerError> {
    let pid = match &sel.process {
        ProcessRef::Pid(pid) => {
            // The allow-list first: a refused id learns nothing more (not even whether it is
            // a thread of some process).
            policy.check(*pid)?;
            let status = proc::process_status(*pid).map_err(|e| gone_or_io(*pid, e))?;
            if status.tgid != *pid && status.tgid != 0 {
                return Err(SamplerError::InvalidArgument(format!(
                    "{pid} is a thread of process {}, not a process (use --pid {} --tid {pid})",
                    status.tgid, status.tgid
                )));
            }
            *pid
        }
        ProcessRef::Name(name) => find_process_by_comm(name)?,
    };
    policy.check(pid)?;
    let comm = proc::process_comm(pid).map_err(|e| gone_or_io(pid, e))?;
    let tids = proc::list_tids(pid).map_err(|e| gone_or_io(pid, e))?;
    let mut threads = Vec::with_capacity(tids.len());
    for tid in tids {
        if !sel.tids.is_empty() && !sel.tids.contains(&tid) {
            continue;
        }
        // A thread that vanished between the listing and here is simply not selected.
        let Ok(name) = proc::task_comm(pid, tid) else {
            continue;
        };
        if sel.selects(tid, &name) {
            threads.push((tid, name));
        }
    }
    Ok(ResolvedTarget { pid, comm, threads })
}

/// The oldest process (smallest start time) whose comm is `name` (compared after the kernel's
/// 15-byte truncation), never the agent itself.
fn find_process_by_comm(name: &str) -> Result<u32, SamplerError> {
    let wanted = truncate_comm(name);
    let me = std::process::id();
    let pids = proc::list_pids().map_err(|e| SamplerError::io("listing /proc", e))?;
    let mut best: Option<(u64, u32)> = None;
    for pid in pids {
        if pid == me {
            continue;
        }
        let Ok(comm) = proc::process_comm(pid) else {
            continue;
        };
        if comm != wanted {
            continue;
        }
        let Ok(stat) = proc::process_stat(pid) else {
            continue;
        };
        if best.is_none_or(|(start, _)| stat.starttime < start) {
            best = Some((stat.starttime, pid));
        }
    }
    best.map(|(_, pid)| pid)
        .ok_or_else(|| SamplerError::NoSuchProcess(format!("no process named {name:?}")))
}

/// `name` cut to the length the kernel keeps for a comm (on a char boundary).
pub fn truncate_comm(name: &str) -> &str {
    if name.len() <= proc::COMM_MAX_LEN {
        return name;
    }
    let mut end = proc::COMM_MAX_LEN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// Maps a `/proc` read error onto "the process is gone" or an I/O error.
pub(crate) fn gone_or_io(pid: u32, e: std::io::Error) -> SamplerError {
    if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) {
        SamplerError::NoSuchProcess(format!("pid {pid}"))
    } else {
        SamplerError::io(format!("reading /proc/{pid}"), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_name_matches_whole_names_only() {
        let re = ThreadSelector::compile_thread_name("spin-1").unwrap();
        assert!(re.is_match("spin-1"));
        assert!(!re.is_match("spin-10"));
        assert!(!re.is_match("xspin-1"));
        let re = ThreadSelector::compile_thread_name("a|b").unwrap();
        assert!(re.is_match("a") && re.is_match("b") && !re.is_match("ab"));
        assert!(ThreadSelector::compile_thread_name("spin-(").is_err());
        assert!(ThreadSelector::compile_thread_name(&"a".repeat(2000)).is_err());
    }

    #[test]
    fn policy_refuses_self_and_unknown_users() {
        let me = std::process::id();
        for policy in [AccessPolicy::unrestricted(), AccessPolicy::own_user()] {
            assert!(matches!(
                policy.check(me),
                Err(SamplerError::PermissionDenied { .. })
            ));
        }
        assert!(AccessPolicy::new(&["no-such-user-xyz".into()], &[]).is_err());
        assert!(AccessPolicy::new(&["0".into()], &["bash".into()]).is_ok());
        assert_eq!(truncate_comm("flamegrid-demo-pipeline"), "flamegrid-demo-");
    }

    #[test]
    fn resolving_a_missing_pid_says_so() {
        let sel = ThreadSelector::pid(u32::MAX - 1);
        let err = resolve(&sel, &AccessPolicy::unrestricted()).unwrap_err();
        assert!(matches!(err, SamplerError::NoSuchProcess(_)), "{err}");
    }
}
