//! Waiting for the threads that read a sampled process's files, with a deadline.
//!
//! The module loader (here) and the symbolizer (`symbolize.rs`) read files that a sampled
//! process names. [`super::target_file`] makes sure those reads never wait on a FIFO or a device,
//! but a regular file on a file system that never answers (a hung NFS server, a hostile FUSE
//! mount) can still block a read in the kernel, where no flag helps. So those threads are never
//! waited for without a bound: a caller that does not hear back within [`FILE_WORK_DEADLINE`]
//! goes on without (its frames stay `module+0xoffset`), and the stuck thread is *replaced* by a
//! fresh one so later runs are not queued behind it. A stuck thread can not be killed, only left
//! behind; at most [`MAX_ABANDONED_THREADS`] are, after which file reads are given up for the
//! life of the agent rather than spend a thread each time.
//!
//! The tracer thread never waits on any of this: it gets the modules as values.

use super::unwind::{ModuleLoader, ProcessModules};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How long a run waits for file work (loading modules, naming frames) before it goes on
/// without. Far above any real cold parse (tens to hundreds of milliseconds), so it is only
/// ever reached by a file system that does not answer.
pub const FILE_WORK_DEADLINE: Duration = Duration::from_secs(20);

/// Most file-reading threads ever left behind stuck; beyond it file work is refused at once.
pub const MAX_ABANDONED_THREADS: usize = 8;

/// How a bounded wait ended.
pub enum Waited<T> {
    /// The answer.
    Got(T),
    /// No answer within the deadline.
    TimedOut,
    /// The run was cancelled (shutdown) while waiting.
    Cancelled,
    /// The worker went away without answering.
    Gone,
}

/// Waits for `rx` until `deadline`, checking `cancel` every 20 ms.
pub fn wait_reply<T>(rx: &mpsc::Receiver<T>, deadline: Instant, cancel: &AtomicBool) -> Waited<T> {
    loop {
        if cancel.load(Ordering::SeqCst) {
            return Waited::Cancelled;
        }
        let now = Instant::now();
        if now >= deadline {
            return Waited::TimedOut;
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_millis(20))) {
            Ok(v) => return Waited::Got(v),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Waited::Gone,
        }
    }
}

/// A replaceable worker thread's sender, its generation (bumped at each replacement, so that
/// many callers timing out on the same stuck thread replace it once) and how many were left.
pub struct Replaceable<J> {
    state: Mutex<(Option<mpsc::Sender<J>>, u64, usize)>,
    spawn: SpawnWorker<J>,
    what: &'static str,
}

/// Starts a worker thread and returns the sender of its jobs.
pub type SpawnWorker<J> = Box<dyn Fn() -> std::io::Result<mpsc::Sender<J>> + Send + Sync>;

impl<J> Replaceable<J> {
    /// Starts the first worker with `spawn`.
    pub fn new(what: &'static str, spawn: SpawnWorker<J>) -> std::io::Result<Self> {
        Ok(Replaceable {
            state: Mutex::new((Some(spawn()?), 0, 0)),
            spawn,
            what,
        })
    }

    /// Sends `job` to the current worker; returns its generation, or `None` when there is no
    /// worker (too many were left stuck, or it could not be restarted).
    pub fn send(&self, job: J) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tx, generation, _) = &mut *state;
        let sender = tx.as_ref()?;
        if let Err(mpsc::SendError(job)) = sender.send(job) {
            // The thread died (a panic); start anew.
            tracing::error!("the {} thread was gone; restarting it", self.what);
            let fresh = (self.spawn)().ok()?;
            fresh.send(job).ok()?;
            *tx = Some(fresh);
            *generation += 1;
        }
        Some(*generation)
    }

    /// The worker of `generation` did not answer in time: leave it behind and start another,
    /// unless that was done already (by another caller) or too many were left.
    pub fn abandon(&self, generation: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tx, current, abandoned) = &mut *state;
        if *current != generation || tx.is_none() {
            return;
        }
        *abandoned += 1;
        *current += 1;
        if *abandoned > MAX_ABANDONED_THREADS {
            tracing::error!(
                "the {} thread was stuck on file reads {MAX_ABANDONED_THREADS} times; no more \
                 file reads for sampled processes (frames stay module+0xoffset)",
                self.what
            );
            *tx = None;
            return;
        }
        tracing::warn!(
            "the {} thread did not answer within {:?} (a file read that never returns?); \
             leaving it behind and starting another",
            self.what,
            FILE_WORK_DEADLINE
        );
        *tx = (self.spawn)().ok();
    }
}

/// What the loader thread is asked.
enum LoadRequest {
    /// The modules of (pid, starttime), cached when known.
    Load { pid: u32, starttime: u64 },
    /// Re-read the maps; new modules if the executable mappings changed.
    Refresh {
        pid: u32,
        known: Arc<ProcessModules>,
    },
}

struct LoadJob {
    request: LoadRequest,
    reply: mpsc::SyncSender<std::io::Result<Option<Arc<ProcessModules>>>>,
}

/// Handle on the module loader thread: reads maps and unwind sections of sampled processes so
/// that the tracer thread never touches their files.
pub struct LoaderThread {
    worker: Replaceable<LoadJob>,
}

impl std::fmt::Debug for LoaderThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoaderThread").finish_non_exhaustive()
    }
}

fn spawn_loader() -> std::io::Result<mpsc::Sender<LoadJob>> {
    let (tx, rx) = mpsc::channel::<LoadJob>();
    std::thread::Builder::new()
        .name("flamegrid-loader".into())
        .spawn(move || {
            let mut loader = ModuleLoader::new();
            for job in rx {
                let answer = match job.request {
                    LoadRequest::Load { pid, starttime } => loader.load(pid, starttime).map(Some),
                    LoadRequest::Refresh { pid, known } => Ok(loader.refresh(pid, &known)),
                };
                let _ = job.reply.send(answer);
            }
        })?;
    Ok(tx)
}

impl LoaderThread {
    /// Starts the loader thread.
    pub fn spawn() -> std::io::Result<LoaderThread> {
        Ok(LoaderThread {
            worker: Replaceable::new("module loader", Box::new(spawn_loader))?,
        })
    }

    fn ask(
        &self,
        request: LoadRequest,
        cancel: &AtomicBool,
    ) -> Option<std::io::Result<Option<Arc<ProcessModules>>>> {
        let (reply, answer) = mpsc::sync_channel(1);
        let generation = self.worker.send(LoadJob { request, reply })?;
        match wait_reply(&answer, Instant::now() + FILE_WORK_DEADLINE, cancel) {
            Waited::Got(v) => Some(v),
            Waited::TimedOut => {
                self.worker.abandon(generation);
                None
            }
            Waited::Cancelled | Waited::Gone => None,
        }
    }

    /// The modules of `pid`; empty modules when they could not be loaded in time (the frames
    /// then stay unnamed, the run goes on).
    pub fn load(&self, pid: u32, starttime: u64, cancel: &AtomicBool) -> Arc<ProcessModules> {
        match self.ask(LoadRequest::Load { pid, starttime }, cancel) {
            Some(Ok(Some(m))) => m,
            Some(Err(e)) => {
                tracing::debug!(pid, error = %e, "modules not loaded");
                ProcessModules::empty(starttime)
            }
            _ => ProcessModules::empty(starttime),
        }
    }

    /// New modules of `pid` if its executable mappings changed since `known`.
    pub fn refresh(
        &self,
        pid: u32,
        known: &Arc<ProcessModules>,
        cancel: &AtomicBool,
    ) -> Option<Arc<ProcessModules>> {
        let request = LoadRequest::Refresh {
            pid,
            known: Arc::clone(known),
        };
        match self.ask(request, cancel) {
            Some(Ok(m)) => m,
            _ => None,
        }
    }
}
