//! The few `/proc` reads the workload handle needs: thread list, names, states, CPU time.
//!
//! Threads come and go while we read (churn threads do so on purpose), so every per-thread
//! read treats "the file vanished" as "the thread is gone" rather than as an error.

use std::fs;
use std::io;

/// The tids in `/proc/<pid>/task`, sorted. Fails only if the process itself is gone.
pub(crate) fn tids(pid: u32) -> io::Result<Vec<u32>> {
    let mut tids: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// (tid, comm) of every live thread, sorted by tid.
pub(crate) fn threads(pid: u32) -> io::Result<Vec<(u32, String)>> {
    Ok(tids(pid)?
        .into_iter()
        .filter_map(|tid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
            Some((tid, comm.trim_end_matches('\n').to_owned()))
        })
        .collect())
}

/// The fields of `/proc/<pid>/task/<tid>/stat` after the command name. The name is in
/// parentheses and may itself contain `)` or spaces, so we split after the *last* `)`.
/// Index 0 is the state (field 3 of proc(5)).
fn stat_fields(pid: u32, tid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The state letter of one thread.
pub(crate) fn state(pid: u32, tid: u32) -> Option<char> {
    stat_fields(pid, tid)?.first()?.chars().next()
}

/// utime + stime (fields 14 and 15 of proc(5)) of one thread, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32, tid: u32) -> Option<u64> {
    let fields = stat_fields(pid, tid)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}
