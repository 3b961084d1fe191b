//! What the benchmarks read about processes and the machine from `/proc`: resident memory,
//! CPU time of a process or of one thread, the load average, and a one-line description of
//! the machine for the head of a report.
//!
//! Every figure is read from the outside, the way `ps` or `top` would, so measuring a process
//! never changes it. The files and fields (see `proc(5)`):
//!
//! * `/proc/PID/status`: `VmRSS` (resident now), `VmHWM` (the peak resident set), `RssAnon`
//!   (heap and stacks) and `RssFile` (mapped files), all in KiB;
//! * `/proc/PID/stat`: `utime` and `stime`, fields 14 and 15, in clock ticks;
//! * `/proc/PID/task/TID/schedstat`: the first number is the nanoseconds the thread has run,
//!   finer than `stat`'s ticks, which matters over a two-second window;
//! * `/proc/loadavg`, `/proc/cpuinfo`, `/proc/meminfo`, `/proc/sys/kernel/osrelease`.
//!
//! A process that exits between two readings is an [`Error::Read`], never a zero: a figure of
//! a dead process would make a report lie.

use crate::Error;
use std::process::Command;

/// Resident memory of one process from `/proc/PID/status`, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the peak resident set since the process started.
    pub hwm: u64,
    /// `RssAnon`: heap and stacks, what the process allocated itself.
    pub anon: u64,
    /// `RssFile`: mapped files (the executable, libraries, files it maps to read symbols).
    pub file: u64,
}

impl Memory {
    /// Reads the memory of process `pid`.
    pub fn of(pid: u32) -> Result<Memory, Error> {
        let path = format!("/proc/{pid}/status");
        Memory::parse(&read(&path)?, &path)
    }

    /// Parses the text of a `/proc/PID/status` file read from `path`.
    fn parse(status: &str, path: &str) -> Result<Memory, Error> {
        let field = |name: &str| -> Result<u64, Error> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| malformed(path, format!("no {name} in KiB")))
        };
        Ok(Memory {
            rss: field("VmRSS")?,
            hwm: field("VmHWM")?,
            anon: field("RssAnon")?,
            file: field("RssFile")?,
        })
    }

    /// The field-wise maximum, to report the largest of several processes (the agents).
    pub fn max(self, other: Memory) -> Memory {
        Memory {
            rss: self.rss.max(other.rss),
            hwm: self.hwm.max(other.hwm),
            anon: self.anon.max(other.anon),
            file: self.file.max(other.file),
        }
    }
}

/// User plus system CPU time of process `pid` so far, in seconds; `ticks_per_second` is
/// [`clock_ticks`].
pub fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Result<f64, Error> {
    let path = format!("/proc/{pid}/stat");
    Ok(cpu_ticks(&read(&path)?, &path)? / ticks_per_second)
}

/// `utime + stime` of the text of a `/proc/PID/stat` file read from `path`, in clock ticks.
fn cpu_ticks(stat: &str, path: &str) -> Result<f64, Error> {
    // The command name (field 2) may hold spaces and parentheses; it ends at the last ')'.
    // State is field 3, the first after it, so utime (14) and stime (15) are the 12th and
    // 13th words after it.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| malformed(path, "no ')' after the command name".to_owned()))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| -> Result<f64, Error> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or_else(|| malformed(path, format!("field {} is not a number", i + 3)))
    };
    Ok(tick(11)? + tick(12)?)
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), the unit of [`cpu_seconds`]'s
/// source; 100 (Linux's value on every common architecture) when it cannot be asked.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Nanoseconds thread `tid` of process `pid` has been on a CPU (the first field of
/// `/proc/PID/task/TID/schedstat`).
pub fn thread_cpu_ns(pid: u32, tid: u32) -> Result<f64, Error> {
    let path = format!("/proc/{pid}/task/{tid}/schedstat");
    read(&path)?
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| malformed(&path, "the run time is not a number".to_owned()))
}

/// The load averages over 1, 5 and 15 minutes exactly as the kernel prints them (`"0.52"`):
/// how busy the shared machine was. `None` when `/proc/loadavg` cannot be read.
pub fn load_averages() -> Option<[String; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut words = text.split_whitespace().map(str::to_owned);
    Some([words.next()?, words.next()?, words.next()?])
}

/// The machine a report was measured on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// CPUs this process may run on (`nproc`); 0 when unknown.
    pub cpus: usize,
    /// The kernel release (`uname -r`); empty when unknown.
    pub kernel: String,
    /// The first `model name` of `/proc/cpuinfo`.
    pub cpu_model: Option<String>,
    /// `MemTotal` of `/proc/meminfo`, KiB.
    pub memory_kib: Option<u64>,
}

impl Machine {
    /// Reads the description of this machine; missing parts are left empty, never an error
    /// (the description is a courtesy, not a figure).
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned()),
            memory_kib: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|l| l.split_whitespace().next()?.parse().ok()),
        }
    }
}

fn read(path: &str) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

fn malformed(path: &str, what: String) -> Error {
    Error::Malformed {
        path: path.to_owned(),
        what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid no process can have (above the kernel's `pid_max` limit of 2^22).
    const NO_SUCH_PID: u32 = u32::MAX;

    #[test]
    fn memory_fields_are_read_in_kib() {
        let status = "Name:\tcat\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n\
                      RssAnon:\t     100 kB\nRssFile:\t     900 kB\nRssShmem:\t       0 kB\n";
        let m = Memory::parse(status, "/proc/1/status").unwrap();
        assert_eq!(
            m,
            Memory {
                rss: 1024,
                hwm: 2048,
                anon: 100,
                file: 900
            }
        );
        let missing = Memory::parse("VmRSS:\t1 kB\n", "/proc/1/status").unwrap_err();
        assert_eq!(missing.to_string(), "/proc/1/status: no VmHWM in KiB");
    }

    #[test]
    fn cpu_ticks_skip_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0";
        assert_eq!(cpu_ticks(stat, "/proc/42/stat").unwrap(), 12.0);
        assert!(cpu_ticks("42 (short) S 1", "/proc/42/stat").is_err());
        assert!(cpu_ticks("no parenthesis", "/proc/42/stat").is_err());
    }

    #[test]
    fn the_figures_of_this_very_process_are_read() {
        let me = std::process::id();
        let m = Memory::of(me).unwrap();
        assert!(m.rss > 0 && m.hwm >= m.rss, "{m:?}");
        // Spin a little so the CPU time is not zero even at 100 ticks per second.
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(30) {
            std::hint::black_box(start.elapsed());
        }
        assert!(cpu_seconds(me, clock_ticks()).unwrap() > 0.0);
        assert!(thread_cpu_ns(me, me).unwrap() >= 0.0);
        assert!(clock_ticks() > 0.0);
        assert!(load_averages().is_some());
        assert!(Machine::read().cpus > 0);
    }

    #[test]
    fn a_process_that_is_not_there_is_an_error_naming_the_file() {
        let e = Memory::of(NO_SUCH_PID).unwrap_err();
        assert!(matches!(e, Error::Read { .. }), "{e:?}");
        assert!(e.to_string().contains("/proc/4294967295/status"), "{e}");
        assert!(cpu_seconds(NO_SUCH_PID, 100.0).is_err());
        assert!(thread_cpu_ns(NO_SUCH_PID, NO_SUCH_PID).is_err());
    }

    #[test]
    fn the_largest_of_two_memories_is_taken_field_by_field() {
        let a = Memory {
            rss: 1,
            hwm: 9,
            anon: 3,
            file: 0,
        };
        let b = Memory {
            rss: 5,
            hwm: 2,
            anon: 3,
            file: 4,
        };
        assert_eq!(
            a.max(b),
            Memory {
                rss: 5,
                hwm: 9,
                anon: 3,
                file: 4
            }
        );
    }
}
