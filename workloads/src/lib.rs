//! Small multi-threaded programs with known call chains, for flamegrid's tests, benchmarks and
//! demo.
//!
//! A sampler is only as trustworthy as the evidence that it reports the stacks a program
//! really has. This crate provides that evidence: native programs (C with and without frame
//! pointers, C++ with namespaces, templates and an inlined function, and Rust) whose threads
//! sit in *known* functions, plus the chains a correct sampler must report for them.
//!
//! The programs are built by `build.rs` into Cargo's `OUT_DIR` (see [`Workload::path`]), and
//! run as separate processes, exactly like the foreign processes flamegrid samples in
//! production. Every program takes the same command line, `PROG SPIN SLEEP WAIT LOCK CHURN
//! [--rate]`, and starts that many threads of each role (see [`Mix`]):
//!
//! | role | thread name | what it does | expected state |
//! |---|---|---|---|
//! | spin | `spin-<i>` | burns CPU through [`Chains::spin`] | `R` (ON_CPU) |
//! | sleep | `sleep-<i>` | loops in `nanosleep` through [`Chains::sleep`] | `S`, TIMED_WAITING |
//! | wait | `wait-<i>` | waits on a condition variable nobody signals | `S`, WAITING |
//! | lock | `lock-<i>` | blocks on a mutex the main thread holds forever | `S`, WAITING |
//! | churn | `churn-<i>` | starts its successor and exits, continuously | comes and goes |
//!
//! [`spawn`] starts a program and returns once it printed `ready` (every thread started and
//! named) and its waiting and locking threads sleep in the kernel. The returned
//! [`RunningWorkload`] reads thread names, states and CPU time from `/proc`, and kills the
//! program when dropped. The programs also exit by themselves when their
//! stdin reaches end-of-file, so even a test process that dies without running destructors
//! leaves no workload behind.
//!
//! ```no_run
//! use flamegrid_workloads::{spawn, Mix, Workload};
//! let mix = Mix { spin: 2, sleep: 1, wait: 1, lock: 1, ..Mix::default() };
//! let running = spawn(Workload::CNoFramePointers, &mix)?;
//! let spinner = running.tid_of("spin-0");
//! # let _ = spinner;
//! # Ok::<(), std::io::Error>(())
//! ```

mod procfs;

use std::io::{self, BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// One of the workload programs built by this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    /// `workload.c` built with `-O2 -fno-omit-frame-pointer`: the easy case for an unwinder.
    CFramePointers,
    /// `workload.c` built with `-O2 -fomit-frame-pointer`: only DWARF CFI unwinds it.
    CNoFramePointers,
    /// `workload.cpp` built with `-O2 -g`: demangling, templates, inlined frames.
    Cpp,
    /// `rust_workload.rs` built with `rustc -C opt-level=2 -g`: Rust (v0/legacy) demangling.
    Rust,
    /// `flamegrid-demo`: a pretend streaming pipeline for `flamegrid-coordinator --demo`;
    /// ignores [`Mix`].
    Demo,
}

impl Workload {
    /// The built executable. Absolute, inside Cargo's `OUT_DIR`, so it stays valid as long
    /// as the target directory does.
    pub fn path(self) -> &'static Path {
        Path::new(match self {
            Workload::CFramePointers => env!("FLAMEGRID_WORKLOAD_C_FP"),
            Workload::CNoFramePointers => env!("FLAMEGRID_WORKLOAD_C_NOFP"),
            Workload::Cpp => env!("FLAMEGRID_WORKLOAD_CPP"),
            Workload::Rust => env!("FLAMEGRID_WORKLOAD_RUST"),
            Workload::Demo => env!("FLAMEGRID_WORKLOAD_DEMO"),
        })
    }

    /// The four programs that take a [`Mix`], so a test can loop over every language and
    /// unwinding situation.
    pub fn all_native() -> [Workload; 4] {
        [
            Workload::CFramePointers,
            Workload::CNoFramePointers,
            Workload::Cpp,
            Workload::Rust,
        ]
    }

    /// The process name (kernel `comm`) the program runs under, for selectors that find a
    /// process by name.
    pub fn process_name(self) -> &'static str {
        match self {
            Workload::CFramePointers => "workload-c-fp",
            Workload::CNoFramePointers => "workload-c-nofp",
            Workload::Cpp => "workload-cpp",
            Workload::Rust => "workload-rust",
            Workload::Demo => "flamegrid-demo",
        }
    }

    /// The call chains a correct sampler reports for this program's threads, outermost
    /// first, named the way flamegrid names frames.
    ///
    /// For [`Workload::Demo`] the fields describe the pipeline threads instead: `spin` is a
    /// source thread's CPU chain (`source-*`), `sleep` is `sink-0`'s timed sleep, `wait` is
    /// `sink-1`'s condition wait and `lock` is empty (no demo thread blocks on a mutex).
    pub fn chains(self) -> &'static Chains {
        match self {
            Workload::CFramePointers | Workload::CNoFramePointers => &C_CHAINS,
            Workload::Cpp => &CPP_CHAINS,
            Workload::Rust => &RUST_CHAINS,
            Workload::Demo => &DEMO_CHAINS,
        }
    }
}

/// Expected call chains, outermost first, as flamegrid names frames (demangled, without
/// argument lists or Rust hashes). A sampled stack of a thread of that role contains the
/// chain as a contiguous run of frames (library frames such as `nanosleep` or
/// `pthread_cond_wait` follow it, thread-start frames precede it).
#[derive(Debug)]
pub struct Chains {
    /// Chain of `spin-<i>` threads; the last entry is where the CPU time is spent.
    pub spin: &'static [&'static str],
    /// Chain of `sleep-<i>` threads down to the function that calls the sleep.
    pub sleep: &'static [&'static str],
    /// Chain of `wait-<i>` threads down to the function that waits on the condition variable.
    pub wait: &'static [&'static str],
    /// Chain of `lock-<i>` threads down to the function that locks the held mutex.
    pub lock: &'static [&'static str],
}

static C_CHAINS: Chains = Chains {
    spin: &["spin_thread", "spin_outer", "spin_middle", "spin_inner"],
    sleep: &["sleep_thread", "sleep_outer", "sleep_inner"],
    wait: &["wait_thread", "wait_outer", "wait_inner"],
    lock: &["lock_thread", "lock_outer", "lock_inner"],
};

static CPP_CHAINS: Chains = Chains {
    spin: &[
        "demo::spin_thread",
        "demo::Spinner::run",
        "demo::Worker<unsigned long>::recurse",
        "demo::Worker<unsigned long>::recurse",
        "demo::Worker<unsigned long>::recurse",
        "demo::Worker<unsigned long>::churn_numbers",
        "demo::mix_step",
    ],
    sleep: &[
        "demo::sleep_thread",
        "demo::sleep_outer",
        "demo::sleep_inner",
    ],
    wait: &["demo::wait_thread", "demo::wait_outer", "demo::wait_inner"],
    lock: &["demo::lock_thread", "demo::lock_outer", "demo::lock_inner"],
};

static RUST_CHAINS: Chains = Chains {
    spin: &[
        "rust_workload::spin::thread_main",
        "rust_workload::spin::outer",
        "rust_workload::spin::middle",
        "rust_workload::spin::inner",
    ],
    sleep: &[
        "rust_workload::sleep::thread_main",
        "rust_workload::sleep::outer",
        "rust_workload::sleep::inner",
    ],
    wait: &[
        "rust_workload::wait::thread_main",
        "rust_workload::wait::outer",
        "rust_workload::wait::inner",
    ],
    lock: &[
        "rust_workload::lock::thread_main",
        "rust_workload::lock::outer",
        "rust_workload::lock::inner",
    ],
};

static DEMO_CHAINS: Chains = Chains {
    spin: &["source_main", "parse_records", "tokenize", "hash_field"],
    sleep: &["sink_flush_main", "flush_batch"],
    wait: &["sink_commit_main", "await_commit"],
    lock: &[],
};

/// The C++ inlined function (`always_inline`, described by DWARF): the innermost entry of
/// [`Workload::Cpp`]'s spin chain, reported as an inlined frame.
pub const CPP_INLINED_FUNCTION: &str = "demo::mix_step";

/// The "gears" programs: two functions with the same bare name in two namespaces or modules
/// (`alpha::Gear::poll` and `beta::Gear::poll`, always inlined into `alpha::drive` and
/// `beta::drive`; `alpha::Gear::step` and `beta::Gear::step`, never inlined), one thread
/// spinning in each of the four. A sampler that names frames by their bare name merges each
/// pair into one node; these programs are the evidence that it does not.
///
/// They take no arguments, print `ready` once every thread runs and exit when stdin reaches
/// end-of-file (sources in `native/gears.cpp` and `native/gears/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gears {
    /// `gears.cpp` built with `-O2 -g`: DWARF has linkage names for its named functions, while
    /// the inlined lambdas and `std::thread` internals carry only a bare `DW_AT_name`, their
    /// scope in the DIE tree.
    Cpp,
    /// `gears/main.rs` built with `-C debuginfo=line-tables-only`: DWARF names functions by
    /// their bare name only, without module or impl type.
    RustLineTables,
    /// `gears/main.rs` built with `-C debuginfo=2`: DWARF has linkage names.
    RustFullDebug,
}

impl Gears {
    /// The built executable (absolute, inside Cargo's `OUT_DIR`).
    pub fn path(self) -> &'static Path {
        Path::new(match self {
            Gears::Cpp => env!("FLAMEGRID_GEARS_CPP"),
            Gears::RustLineTables => env!("FLAMEGRID_GEARS_RUST_LINE_TABLES"),
            Gears::RustFullDebug => env!("FLAMEGRID_GEARS_RUST_FULL_DEBUG"),
        })
    }
}

/// How many threads of each role to start (see the crate documentation for the roles).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mix {
    /// CPU-burning threads (`spin-<i>`).
    pub spin: u32,
    /// Threads looping in `nanosleep` (`sleep-<i>`).
    pub sleep: u32,
    /// Threads waiting on a condition variable without timeout (`wait-<i>`).
    pub wait: u32,
    /// Threads blocked on a mutex the main thread holds (`lock-<i>`).
    pub lock: u32,
    /// Slots of short-lived threads (`churn-<i>`) that keep starting and exiting.
    pub churn: u32,
    /// Print `rate N` (spinner iterations in the last second) every second; read it with
    /// [`RunningWorkload::next_rate`].
    pub report_rate: bool,
}

impl Mix {
    /// One thread of each blocking role and one spinner: the smallest mix that shows every
    /// state.
    pub fn one_of_each() -> Mix {
        Mix {
            spin: 1,
            sleep: 1,
            wait: 1,
            lock: 1,
            churn: 0,
            report_rate: false,
        }
    }

    /// The number of long-lived threads the program has once ready, the main thread
    /// included (churn threads excluded: they come and go).
    pub fn steady_threads(&self) -> u32 {
        1 + self.spin + self.sleep + self.wait + self.lock
    }

    /// The program's command line arguments for this mix.
    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [self.spin, self.sleep, self.wait, self.lock, self.churn]
            .iter()
            .map(u32::to_string)
            .collect();
        if self.report_rate {
            args.push("--rate".to_owned());
        }
        args
    }
}

/// A vertex of the demo job: the subtasks that `flamegrid-coordinator --demo` registers for
/// the [`Workload::Demo`] process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoVertex {
    /// The vertex name shown in the dashboard.
    pub name: &'static str,
    /// One thread-name regex (matched whole) per subtask, in subtask-index order.
    pub subtask_thread_names: &'static [&'static str],
    /// Indexes of upstream vertices (the plan's edges).
    pub inputs: &'static [usize],
}

/// The vertices of the demo pipeline, in plan order, so the coordinator's demo job and the
/// tests that check it agree on names and threads.
pub fn demo_vertices() -> &'static [DemoVertex] {
    &[
        DemoVertex {
            name: "Source: parse records",
            subtask_thread_names: &["source-0", "source-1"],
            inputs: &[],
        },
        DemoVertex {
            name: "Window: aggregate",
            subtask_thread_names: &["window-0"],
            inputs: &[0],
        },
        DemoVertex {
            name: "Sink: flush and commit",
            subtask_thread_names: &["sink-0", "sink-1"],
            inputs: &[1],
        },
    ]
}

/// `vertices` as the one JSON line `flamegrid-demo --vertices` prints:
/// `[{"name": ..., "subtask_thread_names": [...], "inputs": [...]}, ...]`. The coordinator reads
/// it to register the demo job, so the layout has one definition ([`demo_vertices`]).
pub fn demo_vertices_json(vertices: &[DemoVertex]) -> String {
    let vertices: Vec<serde_json::Value> = vertices
        .iter()
        .map(|v| {
            serde_json::json!({
                "name": v.name,
                "subtask_thread_names": v.subtask_thread_names,
                "inputs": v.inputs,
            })
        })
        .collect();
    serde_json::Value::Array(vertices).to_string()
}

/// Starts `w` with the threads `mix` asks for and returns once the program printed `ready`,
/// i.e. once every thread exists and carries its name, and once its `wait-<i>` and `lock-<i>`
/// threads sleep in their blocking calls.
///
/// The program's stdin is a pipe held by the returned value, so the program exits on its own
/// if this process dies. Fails if the program cannot be started or exits before `ready`
/// (e.g. too many threads for the system).
pub fn spawn(w: Workload, mix: &Mix) -> io::Result<RunningWorkload> {
    let mut command = Command::new(w.path());
    if w != Workload::Demo {
        command.args(mix.args());
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {}: {e}", w.path().display()),
            )
        })?;
    // From here on, `running` owns the child: any early return kills and reaps it.
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().map(BufReader::new);
    let mut running = RunningWorkload {
        child,
        workload: w,
        stdin,
        stdout,
        report_rate: mix.report_rate && w != Workload::Demo,
    };
    let line = running.read_line()?;
    match line.as_deref() {
        Some("ready") => {
            running.wait_until_blocked()?;
            Ok(running)
        }
        Some(other) => Err(io::Error::other(format!(
            "{} printed {other:?} instead of \"ready\"",
            w.path().display()
        ))),
        None => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{} exited before it was ready", w.path().display()),
        )),
    }
}

/// A started workload program. Dropping it kills the program (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct RunningWorkload {
    child: Child,
    workload: Workload,
    /// Held open so the program lives; closing it tells the program to exit.
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
    report_rate: bool,
}

impl RunningWorkload {
    /// Waits until every `wait-<i>` and `lock-<i>` thread sleeps in the kernel.
    ///
    /// `ready` means every thread exists; on a loaded machine a waiter may not yet have reached
    /// its blocking call, and a test that expects `WAITING` from its first sample would see a
    /// runnable thread. Polls `/proc` (no fixed sleep); fails after ten seconds.
    fn wait_until_blocked(&self) -> io::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let pending: Vec<String> = self
                .threads()?
                .into_iter()
                .filter(|(_, name)| name.starts_with("wait-") || name.starts_with("lock-"))
                .filter(|&(tid, _)| !matches!(procfs::state(self.pid(), tid), Some('S' | 'D')))
                .map(|(_, name)| name)
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("threads {pending:?} did not block within 10 s"),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// The program's process id (its main thread's tid).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Which program this is.
    pub fn workload(&self) -> Workload {
        self.workload
    }

    /// All threads of the program as (tid, name) from `/proc/<pid>/task`, sorted by tid.
    /// Threads that exit while the directory is read are skipped.
    pub fn threads(&self) -> io::Result<Vec<(u32, String)>> {
        procfs::threads(self.pid())
    }

    /// The tid of the first thread (lowest tid) named exactly `name`, if there is one now.
    pub fn tid_of(&self, name: &str) -> Option<u32> {
        self.threads()
            .ok()?
            .into_iter()
            .find(|(_, comm)| comm == name)
            .map(|(tid, _)| tid)
    }

    /// The kernel's state letter (`R`, `S`, `D`, `t`, ...) of every thread, sorted by tid.
    pub fn thread_states(&self) -> Vec<(u32, char)> {
        procfs::tids(self.pid())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|tid| procfs::state(self.pid(), tid).map(|s| (tid, s)))
            .collect()
    }

    /// Threads currently stopped (state `t`, traced, or `T`, stopped): after any sampling
    /// run this must be empty.
    pub fn stopped_threads(&self) -> Vec<u32> {
        self.thread_states()
            .into_iter()
            .filter(|&(_, s)| s == 't' || s == 'T')
            .map(|(tid, _)| tid)
            .collect()
    }

    /// User plus system CPU time of one thread, in clock ticks (`utime + stime` from its
    /// `stat`), to check that a thread still makes progress. `None` if the thread is gone.
    pub fn cpu_ticks(&self, tid: u32) -> Option<u64> {
        procfs::cpu_ticks(self.pid(), tid)
    }

    /// Blocks until the program's next `rate N` line (about once a second) and returns N,
    /// the spinners' loop iterations in the last second. `None` without
    /// [`Mix::report_rate`], or when the program has exited.
    pub fn next_rate(&mut self) -> Option<u64> {
        if !self.report_rate {
            return None;
        }
        loop {
            let line = self.read_line().ok()??;
            if let Some(n) = line.strip_prefix("rate ") {
                return n.trim().parse().ok();
            }
        }
    }

    /// Starts one more spinner on the running program (the C programs only) and returns its
    /// thread name, `spin-extra-<k>`, once the thread exists and is named. Its stack is
    /// [`Chains::spin`], like the other spinners': a process whose hot code changes while it
    /// runs, so a test can compare a run without the spin chain with one that has it
    /// (differential flame graphs).
    pub fn start_extra_spinner(&mut self) -> io::Result<String> {
        if !matches!(
            self.workload,
            Workload::CFramePointers | Workload::CNoFramePointers
        ) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{:?} cannot start spinners while it runs (only the C programs can)",
                    self.workload
                ),
            ));
        }
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stdin already closed",
            ));
        };
        stdin.write_all(b"+\n")?;
        stdin.flush()?;
        loop {
            match self.read_line()? {
                Some(line) => {
                    if let Some(name) = line.strip_prefix("spinning ") {
                        return Ok(name.to_string());
                    }
                    // `rate N` lines (with --rate) are skipped.
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the program exited before starting the spinner",
                    ));
                }
            }
        }
    }

    /// Closes the program's stdin, which asks it to exit by itself (as it does when the
    /// parent dies).
    pub fn close_stdin(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            // A failed flush only means the program is already gone.
            let _ = stdin.flush();
        }
    }

    /// The program's exit status if it has exited, without blocking.
    pub fn try_wait(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// [`RunningWorkload::close_stdin`], then waits for the program to exit and returns its
    /// exit status.
    pub fn close_stdin_and_wait(mut self) -> io::Result<std::process::ExitStatus> {
        self.close_stdin();
        self.child.wait()
    }

    /// Reads one line of the program's stdout without its newline; `None` at end-of-file.
    fn read_line(&mut self) -> io::Result<Option<String>> {
        let Some(stdout) = self.stdout.as_mut() else {
            return Ok(None);
        };
        let mut line = String::new();
        if stdout.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(line.trim_end().to_owned()))
    }
}

impl Drop for RunningWorkload {
    fn drop(&mut self) {
        // Errors mean the program already exited; either way it is reaped below.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests;
