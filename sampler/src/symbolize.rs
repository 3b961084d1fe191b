//! From addresses to frame names: blazesym, demangling, and name cleanup.
//!
//! Symbolization is the expensive part of sampling (tens of milliseconds to parse a library's
//! DWARF the first time), so it never happens while a thread is stopped: once per distinct
//! address, on a dedicated thread that keeps one long-lived [`blazesym`] symbolizer, which names
//! each round's new addresses while the sampler waits for the next round (and the rest after the
//! last one), so the cold parse overlaps the sampling window.
//! blazesym caches parsed files keyed by device/inode/size/mtime (so a replaced binary is read
//! again).
//!
//! blazesym never opens a file a sampled process names. Each module's file is opened here through
//! [`target_file::open_mapped`] (`/proc/<pid>/map_files`, else the process's own root, so
//! processes in other mount namespaces work; only a regular file with the mapping's device and
//! inode, never a FIFO or a device), copied into a sealed memfd with its debug links made safe
//! ([`target_file::sealed_copy`]), and blazesym reads that copy through `/proc/self/fd/N`: it
//! maps whole files, and a map of a file the target truncates would kill the agent with SIGBUS,
//! while a sealed memfd can not shrink. Copies are kept per file identity while the symbolizer
//! lives, so a library shared by many processes is copied and parsed once. A module that cannot
//! be opened costs only its own frames (`module+0xoffset`), never the rest of the batch. The
//! symbolizer is not `Send`, which is one more reason it lives on a thread of its own; callers
//! wait for it with a deadline ([`workers`]), so even a read that never returns costs a run its
//! names, not the agent its sampling.
//!
//! ## Names
//!
//! Names are made to *aggregate*: a flame graph merges frames by name, so the same function must
//! get the same name in every sample, thread and host, and two different functions must never
//! get the same one (their samples would merge into one node). Hence:
//!
//! * C++ is demangled without argument lists or return types (`demo::Worker<unsigned long>::recurse`);
//! * Rust is demangled without the `::h0123456789abcdef` hash (`rust_workload::spin::inner`);
//! * GCC's clone suffixes (`.constprop.0`, `.isra.0`, `.part.0`, `.cold`) are dropped, as a
//!   function split or specialised by the optimiser is still that function;
//! * functions DWARF says were inlined become frames of their own, marked `inlined`;
//! * a name carries its full scope where the debug information has it: blazesym names DWARF
//!   functions, inlined ones included, by their linkage name (`DW_AT_linkage_name`, followed
//!   through `DW_AT_abstract_origin` and `DW_AT_specification`), which demangles to the full
//!   path;
//! * an inlined C++ function that DWARF records by its bare `DW_AT_name` only (GCC does so for
//!   lambdas' `operator()` and for inlined template members such as `std::thread`'s
//!   `_M_invoke<0>`) takes its scope from the DIE tree around its declaration
//!   ([`super::dwarf_scope`]): the enclosing namespaces (`(anonymous namespace)` for a
//!   nameless one), classes and, for a lambda's nameless class, the function it is declared in
//!   and its number there: `alpha::turn::{lambda()#1}::operator()`. The tree is read only for
//!   batches with such a frame (not in a `.c` or `.rs` file), only for the units that hold
//!   those addresses and are C++, from the module's own sealed copy; what it cannot tell (a
//!   separate debug file, compressed sections, a malformed tree) leaves the bare name;
//! * where DWARF has only a bare name (Rust's `debug = "line-tables-only"`, this project's own
//!   release profile, records no linkage names and no scopes), a function that was not inlined
//!   takes the ELF symbol table's name for the same start address (`gears::alpha::drive`, not
//!   `drive`), and a bare frame of Rust source gets the file that declares it:
//!   `poll (alpha.rs)` and `poll (beta.rs)` stay two nodes. The symbol table lookup happens
//!   only for batches with a bare name, on the file blazesym already parsed;
//! * generic argument lists longer than [`MAX_GENERIC_ARGS_CHARS`] become `<...>`
//!   ([`shorten_generics`]), so closure and future frames stay readable;
//! * an address without a symbol is `module+0xoffset` (file offset), or `[unknown]`.
//!
//! C names are never changed: a C function's bare name is its whole name (a C function inlined
//! into C++, such as `getchar`, has no enclosing scope in the tree either).
//!
//! ## Memory: parsed debug information is kept only while it is being used
//!
//! The symbolizer's caches are most of what an agent holds after a run. DWARF is usually stored
//! compressed (Debian's `libc6-dbg` is), and blazesym inflates the sections it reads onto the
//! heap: glibc alone is about 8 MiB of `.debug_info`, `.debug_line` and `.debug_abbrev`, plus
//! the parsed unit and function tables and the mapped debug file. Keeping all that between runs
//! is what makes the next run's symbolization cheap (a flame graph is polled again and again
//! while someone looks at it), but an agent that is not sampling has no use for it. So the
//! thread drops its symbolizer once no batch arrived for its idle time
//! ([`super::SYMBOL_CACHE_IDLE`] by default) and hands the freed pages back to the kernel
//! ([`crate::memory::release_free_memory`]); the scope tables of [`super::dwarf_scope`] live in
//! the same per-symbolizer state and go with it. What it keeps are the answers (`NameCache`):
//! frames per process and address, small and bounded. Stacks of a steady workload repeat, so
//! the next run mostly finds its addresses there; only an address never seen before makes the
//! thread build a new symbolizer and pay the cold parse (tens to a few hundred milliseconds).

use super::dwarf_scope::{InlinedName, ScopeCache};
use super::maps::{self, MapEntry};
use super::target_file::{self, MappedIdentity};
use super::unwind::FileKey;
use super::workers::{self, Replaceable, Waited};
use flamegrid_model::Frame;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// Most addresses whose frames the [`NameCache`] keeps (all processes together); past it the
/// cache starts afresh. A frame list is ~100 bytes, so this bounds it to a few MiB, while a
/// real flame graph of a steady workload needs a few thousand.
const MAX_CACHED_ADDRESSES: usize = 65_536;

/// Most module copies kept at once (with the symbolizer that reads them); past it both start
/// afresh.
const MAX_MODULE_COPIES: usize = 256;

/// A batch: distinct addresses of one process.
struct Job {
    pid: u32,
    /// The process's start time (`/proc/PID/stat`), so a reused pid never gets old names.
    starttime: u64,
    addrs: Vec<u64>,
    /// The process's mappings as read during the run: what names its frames if it exits
    /// before symbolization (`/proc/<pid>` is gone by then).
    maps: Arc<Vec<maps::MapEntry>>,
    reply: mpsc::SyncSender<Vec<Vec<Frame>>>,
}

/// Handle on the symbolizer thread (replaced by a fresh one if it ever stops answering).
pub struct SymbolizerThread {
    worker: Replaceable<Job>,
    /// Whether the thread holds a symbolizer (and its caches) right now.
    warm: Arc<AtomicBool>,
}

impl std::fmt::Debug for SymbolizerThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SymbolizerThread").finish_non_exhaustive()
    }
}

impl SymbolizerThread {
    /// Starts the thread; it drops its caches after `idle_release` without a batch.
    pub fn spawn(idle_release: Duration) -> std::io::Result<SymbolizerThread> {
        let warm = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&warm);
        let spawn = move || -> std::io::Result<mpsc::Sender<Job>> {
            let (tx, rx) = mpsc::channel::<Job>();
            let flag = Arc::clone(&flag);
            std::thread::Builder::new()
                .name("flamegrid-symbolizer".into())
                .spawn(move || serve(rx, idle_release, &flag))?;
            Ok(tx)
        };
        Ok(SymbolizerThread {
            worker: Replaceable::new("symbolizer", Box::new(spawn))?,
            warm,
        })
    }

    /// Whether the symbolizer holds parsed debug information now (false before the first
    /// batch and after an idle release).
    pub fn holds_caches(&self) -> bool {
        self.warm.load(Ordering::SeqCst)
    }

    /// Hands a batch of `pid`'s addresses to the symbolizer thread and returns at once;
    /// [`PendingNames::wait`] gives the frames, one or more per address, outermost first (the
    /// function, then the functions inlined into it). `run_maps` are the process's mappings as
    /// read during the run: when the process has exited by then, its frames are named from the
    /// mapped files themselves through them, and when the symbolizer does not answer in time
    /// they give `module+0xoffset` names. A run submits the addresses of its early rounds
    /// while it is still sampling, so the cold parse of a target's debug information overlaps
    /// the sampling window instead of following it.
    pub fn submit(
        &self,
        pid: u32,
        starttime: u64,
        addrs: Vec<u64>,
        run_maps: Arc<Vec<maps::MapEntry>>,
    ) -> PendingNames {
        let (reply, answer) = mpsc::sync_channel(1);
        let generation = self.worker.send(Job {
            pid,
            starttime,
            addrs: addrs.clone(),
            maps: Arc::clone(&run_maps),
            reply,
        });
        if generation.is_none() {
            tracing::error!("the symbolizer thread is gone; frames stay unnamed");
        }
        PendingNames {
            addrs,
            maps: run_maps,
            answer: generation.map(|g| (g, answer)),
        }
    }
}

/// A batch handed to the symbolizer thread whose frames have not been collected yet.
#[derive(Debug)]
pub struct PendingNames {
    addrs: Vec<u64>,
    /// The process's mappings, for `module+0xoffset` names when no answer comes.
    maps: Arc<Vec<MapEntry>>,
    /// The worker's generation and the answer; `None` when the batch could not be sent.
    answer: Option<(u64, mpsc::Receiver<Vec<Vec<Frame>>>)>,
}

impl PendingNames {
    /// Waits (at most [`workers::FILE_WORK_DEADLINE`], less if `cancel` is raised) until the
    /// batch is named: each address with its frames, outermost first. Without an answer in
    /// time every address is named from the run's maps (`module+0xoffset`) and the stuck
    /// symbolizer thread is replaced.
    pub fn wait(
        self,
        symbolizer: &SymbolizerThread,
        cancel: &AtomicBool,
    ) -> impl Iterator<Item = (u64, Vec<Frame>)> {
        let frames = self.answer.and_then(|(generation, answer)| {
            let deadline = Instant::now() + workers::FILE_WORK_DEADLINE;
            match workers::wait_reply(&answer, deadline, cancel) {
                Waited::Got(frames) if frames.len() == self.addrs.len() => Some(frames),
                Waited::TimedOut => {
                    symbolizer.worker.abandon(generation);
                    None
                }
                _ => None,
            }
        });
        let frames = frames.unwrap_or_else(|| {
            self.addrs
                .iter()
                .map(|&a| vec![unknown_frame(&self.maps, a)])
                .collect()
        });
        self.addrs.into_iter().zip(frames)
    }
}

/// The frames already found, per process instance and address: what survives an idle release.
///
/// Dropping the symbolizer frees the parsed debug information, and rebuilding it costs the
/// next run the cold parse (glibc's DWARF alone takes 100+ ms). But a steady workload's
/// stacks repeat: the blocked threads sit at the same return addresses run after run. So the
/// *answers* are kept (a few hundred bytes per address, bounded by [`MAX_CACHED_ADDRESSES`])
/// and only addresses never seen before reach blazesym. Keyed by pid and start time: a
/// restarted process (same pid, new start time) is symbolized afresh. What this cannot see is
/// a library unloaded and another loaded at the same address in a live process; its frames
/// would keep the old names until the cache starts afresh.
#[derive(Default)]
struct NameCache {
    processes: HashMap<(u32, u64), HashMap<u64, Vec<Frame>>>,
    entries: usize,
}

impl NameCache {
    fn get(&self, process: (u32, u64), addr: u64) -> Option<&Vec<Frame>> {
        self.processes.get(&process)?.get(&addr)
    }

    /// Forgets earlier processes that had `process`'s pid (it was restarted): their names are
    /// of no use any more.
    fn forget_earlier(&mut self, process: (u32, u64)) {
        let before = self.processes.len();
        self.processes
            .retain(|&(pid, start), _| pid != process.0 || start == process.1);
        if self.processes.len() != before {
            self.entries = self.processes.values().map(HashMap::len).sum();
        }
    }

    fn insert(&mut self, process: (u32, u64), addr: u64, frames: Vec<Frame>) {
        if self.entries >= MAX_CACHED_ADDRESSES {
            self.processes.clear();
            self.entries = 0;
        }
        if self
            .processes
            .entry(process)
            .or_default()
            .insert(addr, frames)
            .is_none()
        {
            self.entries += 1;
        }
    }
}

fn serve(rx: mpsc::Receiver<Job>, idle_release: Duration, warm: &AtomicBool) {
    // Built on the first batch that needs it, dropped after `idle_release` without a batch.
    let mut symbolizer: Option<blazesym::symbolize::Symbolizer> = None;
    let mut names = NameCache::default();
    // Sealed copies of the modules blazesym reads, per file identity; they live and die with
    // the symbolizer.
    let mut copies = ModuleCopies::default();
    let mut pids_seen: std::collections::HashSet<u32> = Default::default();
    loop {
        let job = if symbolizer.is_some() {
            match rx.recv_timeout(idle_release) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    symbolizer = None;
                    copies = ModuleCopies::default();
                    pids_seen.clear();
                    warm.store(false, Ordering::SeqCst);
                    crate::memory::release_free_memory();
                    tracing::debug!(
                        resident_kib = ?crate::memory::resident_kib(),
                        "symbolizer idle: dropped its caches"
                    );
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            }
        };
        // blazesym keeps per-path state for every process it saw; start afresh now and then so
        // a long-lived agent sampling many short-lived processes does not grow without bound.
        pids_seen.insert(job.pid);
        if pids_seen.len() > 512 || copies.files.len() > MAX_MODULE_COPIES {
            symbolizer = None;
            copies = ModuleCopies::default();
            pids_seen.clear();
            pids_seen.insert(job.pid);
        }
        let process = (job.pid, job.starttime);
        names.forget_earlier(process);
        let misses: Vec<u64> = job
            .addrs
            .iter()
            .copied()
            .filter(|&a| names.get(process, a).is_none())
            .collect();
        if !misses.is_empty() {
            let symbolizer = symbolizer.get_or_insert_with(new_symbolizer);
            warm.store(true, Ordering::SeqCst);
            let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                symbolize_batch(symbolizer, &mut copies, job.pid, &misses).or_else(|| {
                    // The process is gone (it exited during or right after the run): name
                    // the addresses from the files it had mapped, by their paths here, if
                    // they are still the mapped files.
                    symbolize_from_files(symbolizer, &mut copies, &job.maps, &misses, &|e| {
                        target_file::open_verified(&e.path, MappedIdentity::of(e)?).ok()
                    })
                })
            }));
            match found {
                // Only answers of a successful symbolization are kept; a failed one (process
                // gone, files unreadable) may succeed next time.
                Ok(Some(frames)) => {
                    for (addr, frames) in misses.into_iter().zip(frames) {
                        names.insert(process, addr, frames);
                    }
                }
                Ok(None) => {}
                Err(_) => {
                    tracing::error!(pid = job.pid, "symbolizer panicked; frames stay unknown")
                }
            }
        }
        // Anything still missing (failed above) is named from the maps alone, uncached.
        let maps = std::cell::OnceCell::new();
        let frames = job
            .addrs
            .iter()
            .map(|&a| match names.get(process, a) {
                Some(frames) => frames.clone(),
                None => vec![unknown_frame(
                    maps.get_or_init(|| {
                        maps::read_maps(job.pid).unwrap_or_else(|_| job.maps.to_vec())
                    }),
                    a,
                )],
            })
            .collect();
        let _ = job.reply.send(frames);
    }
}

fn new_symbolizer() -> blazesym::symbolize::Symbolizer {
    blazesym::symbolize::Symbolizer::builder()
        .enable_auto_reload(true)
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .enable_demangling(false)
        .build()
}

/// Frames for each address, or `None` when the process is gone (or nothing could be named).
///
/// Each module is opened through [`target_file::open_mapped`] (its `map_files` entry, else the
/// process's root), so a module in another mount namespace is named from its own file, and
/// one that cannot be opened keeps `module+0xoffset` names without failing the batch.
fn symbolize_batch(
    symbolizer: &blazesym::symbolize::Symbolizer,
    copies: &mut ModuleCopies,
    pid: u32,
    addrs: &[u64],
) -> Option<Vec<Vec<Frame>>> {
    // A process whose main thread exited is reached through one of its live threads.
    let (live, maps) = maps::read_live_maps(pid).ok()?;
    if maps.is_empty() {
        return None;
    }
    let frames = symbolize_from_files(symbolizer, copies, &maps, addrs, &|e| {
        target_file::open_mapped(live, e)
    })?;
    // A process that exited while its modules were being opened left some of them unopened
    // (`module+0xoffset`): answer "gone", so the caller names them from the recorded maps
    // instead of keeping those names for good.
    if !std::path::Path::new(&format!("/proc/{live}")).exists() {
        return None;
    }
    Some(frames)
}

/// Sealed copies of module files ([`target_file::sealed_copy`]) by file identity: what blazesym
/// reads instead of the files themselves, and what the scopes of bare inlined C++ frames are
/// read from ([`ScopeCache`]).
#[derive(Default)]
struct ModuleCopies {
    /// `None`: the file could not be copied (too large, unreadable); not tried again.
    files: HashMap<FileKey, Option<File>>,
    scopes: ScopeCache,
}

impl ModuleCopies {
    /// The identity of `file` and the path blazesym opens for its contents: `/proc/self/fd/N`
    /// of its sealed copy.
    fn path_of(&mut self, file: &File) -> Option<(FileKey, String)> {
        let key = FileKey::of(&file.metadata().ok()?);
        let copy = self.files.entry(key.clone()).or_insert_with(|| {
            target_file::sealed_copy(file)
                .map_err(|err| tracing::debug!(%err, "module not copied"))
                .ok()
        });
        copy.as_ref()
            .map(|c| (key, format!("/proc/self/fd/{}", c.as_raw_fd())))
    }

    /// The full names of `sym`'s inlined frames that DWARF gave only a bare C++ name, from the
    /// DIE tree of the copy of file `key` ([`super::dwarf_scope`]): one entry per inlined
    /// frame, `None` where the name stays as it is. Empty (and no DWARF read) when no
    /// inlined frame of `sym` is bare.
    fn inlined_scopes(
        &mut self,
        key: &FileKey,
        sym: &blazesym::symbolize::Sym<'_>,
    ) -> Vec<Option<String>> {
        let bare = |f: &blazesym::symbolize::InlinedFn<'_>| {
            !is_mangled(&f.name)
                && !has_scope(&f.name)
                && !f.code_info.as_ref().is_some_and(|c| {
                    let file = std::path::Path::new(&*c.file);
                    matches!(file.extension().and_then(|e| e.to_str()), Some("c" | "rs"))
                })
        };
        if !sym.inlined.iter().any(bare) {
            return Vec::new();
        }
        let Some(Some(copy)) = self.files.get(key) else {
            return Vec::new();
        };
        let svma = sym.addr.saturating_add(sym.offset as u64);
        let calls = self.scopes.inlined_at(key, copy, svma);
        match_inlined(&sym.inlined, &calls, bare)
    }
}

/// Pairs blazesym's inlined frames with the inlined calls the DIE tree has at the same address
/// (both outermost first): frame `i` takes the scoped name of its call when the bare names
/// agree. With as many calls as frames they pair by position; otherwise each frame takes the
/// next call of its name, in order.
fn match_inlined(
    frames: &[blazesym::symbolize::InlinedFn<'_>],
    calls: &[InlinedName],
    wanted: impl Fn(&blazesym::symbolize::InlinedFn<'_>) -> bool,
) -> Vec<Option<String>> {
    let mut next = 0;
    frames
        .iter()
        .enumerate()
        .map(|(i, frame)| {
            let call = if calls.len() == frames.len() {
                calls.get(i).filter(|c| c.bare == frame.name)
            } else {
                let found = calls[next.min(calls.len())..]
                    .iter()
                    .position(|c| c.bare == frame.name)
                    .map(|at| next + at);
                if let Some(at) = found {
                    next = at + 1;
                }
                found.and_then(|at| calls.get(at))
            };
            call.filter(|_| wanted(frame))
                .and_then(|c| c.scoped.clone())
        })
        .collect()
}

/// The frames of one symbol: the function, then the functions inlined into it.
///
/// `symtab` is the same address looked up in the ELF symbol table alone (see
/// [`frame_names`]); it names the outer frame when DWARF gave only a bare name. `scoped` are
/// full names for inlined frames from the DIE tree ([`ModuleCopies::inlined_scopes`]).
fn frames_of(
    sym: &blazesym::symbolize::Sym<'_>,
    symtab: Option<&blazesym::symbolize::Sym<'_>>,
    scoped: &[Option<String>],
    module: String,
) -> Vec<Frame> {
    frame_names(sym, symtab, scoped)
        .into_iter()
        .enumerate()
        .map(|(i, name)| Frame {
            name,
            module: module.clone(),
            inlined: i > 0,
        })
        .collect()
}

/// The names of one symbol's frames, outermost first, formed so that two different functions
/// never share a name (see the module docs, "Names").
///
/// * The outer (not inlined) frame takes the DWARF name (the linkage name where there is one).
///   When that is bare, as with Rust's `debug = "line-tables-only"`, which records functions
///   by their bare name only, the ELF symbol table's name for the same function (same start
///   address) is used instead if it is mangled: it carries the full path (`gears::alpha::drive`).
/// * A frame whose name is still bare and whose code is Rust source gets its declaring source
///   file: `poll (alpha.rs)`. That is what the line tables know about where it was declared,
///   and it keeps apart same-named inlined functions of different modules. C names are left
///   alone: a C function's bare name is its whole name.
/// * An inlined C++ frame with a bare name (a lambda's `operator()`, a template member without
///   linkage name) takes its scoped name from the DIE tree, where `scoped` has one
///   (`alpha::turn::{lambda()#1}::operator()`).
/// * Long generic argument lists are shortened ([`shorten_generics`]).
fn frame_names(
    sym: &blazesym::symbolize::Sym<'_>,
    symtab: Option<&blazesym::symbolize::Sym<'_>>,
    scoped: &[Option<String>],
) -> Vec<String> {
    let mut names = Vec::with_capacity(1 + sym.inlined.len());
    let mut outer = clean_name(&sym.name);
    if !has_scope(&outer)
        && let Some(symtab) = symtab
        && symtab.addr == sym.addr
        && is_mangled(&symtab.name)
    {
        outer = clean_name(&symtab.name);
    }
    names.push(qualify_bare(outer, sym.code_info.as_deref()));
    for (i, f) in sym.inlined.iter().enumerate() {
        let name = match scoped.get(i) {
            Some(Some(full)) => full.clone(),
            _ => clean_name(&f.name),
        };
        names.push(qualify_bare(name, f.code_info.as_ref()));
    }
    names
}

/// Whether `raw` is a mangled C++ or Rust symbol name.
fn is_mangled(raw: &str) -> bool {
    raw.starts_with("_Z") || raw.starts_with("_R")
}

/// Whether a demangled name has a scope (`ns::f`, `<T as Trait>::f`): a `::` outside any
/// generic argument list.
fn has_scope(name: &str) -> bool {
    let mut depth = 0usize;
    let bytes = name.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'<' => depth += 1,
            b'>' if i > 0 && bytes[i - 1] == b'-' => {}
            b'>' => depth = depth.saturating_sub(1),
            b':' if depth == 0 && bytes.get(i + 1) == Some(&b':') => return true,
            _ => {}
        }
    }
    false
}

/// `name`, shortened ([`shorten_generics`]), and, when it is bare and its code is in a Rust
/// source file, followed by that file: `poll (alpha.rs)`. A file named `mod.rs`,
/// `lib.rs` or `main.rs` says little on its own, so its directory comes with it
/// (`poll (future/mod.rs)`).
fn qualify_bare(name: String, code: Option<&blazesym::symbolize::CodeInfo<'_>>) -> String {
    let short = shorten_generics(&name);
    if has_scope(&name) {
        return short;
    }
    let Some(code) = code else {
        return short;
    };
    // The line table may split a path anywhere between `dir` and `file`: join them first.
    let path = match code.dir.as_deref() {
        Some(dir) => dir.join(&*code.file),
        None => std::path::PathBuf::from(&*code.file),
    };
    let mut parts = path.iter().rev().map(|p| p.to_string_lossy());
    let Some(file) = parts.next().filter(|f| f.ends_with(".rs")) else {
        return short;
    };
    match parts.next() {
        Some(dir) if matches!(&*file, "mod.rs" | "lib.rs" | "main.rs") && dir != "/" => {
            format!("{short} ({dir}/{file})")
        }
        _ => format!("{short} ({file})"),
    }
}

/// Longest generic argument list (the text between `<` and `>` after a name) kept as it is.
/// `demo::Worker<unsigned long>` and `std::vector<int, std::allocator<int> >` stay whole.
pub const MAX_GENERIC_ARGS_CHARS: usize = 48;

/// Shortens long generic argument lists so names stay readable: every argument list that
/// follows a name (`catch_unwind<...>`, `Map<...>`) and holds more than
/// [`MAX_GENERIC_ARGS_CHARS`] characters becomes `<...>`; the path around it is kept. A
/// qualified-self type (`<Foo as Trait>::poll`, a `<` that does not follow a name) is a scope,
/// not an argument list, and keeps its text (with its own long argument lists shortened), so
/// the impl type still tells two `poll`s apart. What this merges are instances of one generic
/// function with different long type arguments, as Rust's own backtraces, which print paths
/// without generic arguments, do. A name whose brackets do not balance (`operator<`) is left
/// as it is.
pub fn shorten_generics(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = String::with_capacity(name.len());
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        if bytes[i] == b'<'
            && i > 0
            && follows_name(bytes[i - 1])
            && !name[..i].ends_with("operator")
        {
            let Some(close) = matching_close(bytes, i) else {
                return name.to_string();
            };
            if close - i - 1 > MAX_GENERIC_ARGS_CHARS {
                out.push_str(&name[copied..i]);
                out.push_str("<...>");
                copied = close + 1;
            }
            i = close + 1;
            continue;
        }
        i += 1;
    }
    out.push_str(&name[copied..]);
    out
}

/// Whether a `<` after this byte opens a generic argument list (it follows a name).
fn follows_name(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'}' || b == b'>'
}

/// The index of the `>` that closes the `<` at `open` (a `->` does not close), if any.
fn matching_close(bytes: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        match b {
            b'<' => depth += 1,
            b'>' if bytes[i - 1] == b'-' => {}
            b'>' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Frames for addresses from the files mapped at them (`run_maps`): each address becomes a file
/// offset in its module, which blazesym resolves in the sealed copy of the file `open` gives
/// for that mapping. A module that cannot be opened or read keeps `module+0xoffset` names; the
/// others are still named. `None` when nothing could be named.
fn symbolize_from_files(
    symbolizer: &blazesym::symbolize::Symbolizer,
    copies: &mut ModuleCopies,
    run_maps: &[maps::MapEntry],
    addrs: &[u64],
    open: &dyn Fn(&MapEntry) -> Option<File>,
) -> Option<Vec<Vec<Frame>>> {
    use blazesym::symbolize::source::{Elf, Source};
    use blazesym::symbolize::{Input, Symbolized};
    let mut frames: Vec<Vec<Frame>> = addrs
        .iter()
        .map(|&a| vec![unknown_frame(run_maps, a)])
        .collect();
    // Addresses grouped by the mapped file that holds them (the first mapping of it stands
    // for all), as (index in `addrs`, file offset).
    // Keyed by (path, device, inode); the first mapping of the file stands for it.
    type Wanted<'a> = (&'a MapEntry, Vec<(usize, u64)>);
    let mut by_file: HashMap<(&str, &str, u64), Wanted<'_>> = HashMap::new();
    for (i, &addr) in addrs.iter().enumerate() {
        if let Some(e) = run_maps
            .iter()
            .find(|e| e.start <= addr && addr < e.end && e.is_file())
        {
            by_file
                .entry((e.path.as_str(), e.dev.as_str(), e.inode))
                .or_insert_with(|| (e, Vec::new()))
                .1
                .push((i, addr - e.start + e.offset));
        }
    }
    let mut named_any = false;
    for ((path, _, _), (entry, wanted)) in by_file {
        let Some((key, copy)) = open(entry).and_then(|file| copies.path_of(&file)) else {
            continue;
        };
        let offsets: Vec<u64> = wanted.iter().map(|&(_, off)| off).collect();
        let source = Source::Elf(Elf::new(copy.clone()));
        let symbolized = match symbolizer.symbolize(&source, Input::FileOffset(&offsets)) {
            Ok(s) => s,
            Err(err) => {
                tracing::debug!(path, %err, "module not symbolized");
                continue;
            }
        };
        // Functions DWARF names only by their bare name (Rust line tables) are looked up in
        // the symbol table too, for their full path. Same parsed file (blazesym shares it
        // between both lookups), and a symbol table lookup is a binary search.
        let bare = symbolized.iter().any(|s| match s {
            Symbolized::Sym(sym) => !is_mangled(&sym.name) && !has_scope(&sym.name),
            _ => false,
        });
        let symtab = if bare {
            let mut elf = Elf::new(copy);
            elf.debug_syms = false;
            symbolizer
                .symbolize(&Source::Elf(elf), Input::FileOffset(&offsets))
                .map_err(|err| tracing::debug!(path, %err, "symbol table not read"))
                .ok()
        } else {
            None
        };
        let module = maps::basename(path).to_string();
        for (n, (&(i, _), sym)) in wanted.iter().zip(&symbolized).enumerate() {
            if let Symbolized::Sym(sym) = sym {
                let symtab = match symtab.as_ref().and_then(|t| t.get(n)) {
                    Some(Symbolized::Sym(s)) => Some(s),
                    _ => None,
                };
                let scoped = copies.inlined_scopes(&key, sym);
                frames[i] = frames_of(sym, symtab, &scoped, module.clone());
                named_any = true;
            }
        }
    }
    named_any.then_some(frames)
}

/// `module+0xoffset` (file offset) for an address in a known mapping, else `[unknown]`.
fn unknown_frame(maps: &[maps::MapEntry], addr: u64) -> Frame {
    match maps
        .iter()
        .find(|e| e.start <= addr && addr < e.end && !e.path.is_empty())
    {
        Some(e) => {
            let module = maps::basename(&e.path).to_string();
            Frame {
                name: format!("{module}+{:#x}", addr - e.start + e.offset),
                module,
                inlined: false,
            }
        }
        None => Frame::named("[unknown]"),
    }
}

/// A raw symbol name (mangled or not) as flamegrid names frames: demangled, no argument list,
/// no return type, no Rust hash, no compiler clone suffix.
pub fn clean_name(raw: &str) -> String {
    let name = clean_mangled(raw);
    // DWARF names of Rust items are sometimes legacy-mangled path text that nobody demangled
    // (`_$LT$impl$u20$...$GT$::next::h9e21...`): decode the escapes and drop the hash too.
    if name.contains('$') || rust_hash_suffix(&name).is_some() {
        return decode_rust_legacy(&name);
    }
    name
}

fn clean_mangled(raw: &str) -> String {
    // rustc-demangle also accepts many C++ names; trust it only when the name really had a
    // Rust hash or v0 mangling, or when C++ demangling fails.
    if (raw.starts_with("_R") || raw.starts_with("_ZN"))
        && let Ok(d) = rustc_demangle::try_demangle(raw)
        && (raw.starts_with("_R") || has_rust_hash(raw) || cpp_demangle_clean(raw).is_none())
    {
        return strip_clone_suffix(&format!("{d:#}")).to_string();
    }
    if raw.starts_with("_Z")
        && let Some(name) = cpp_demangle_clean(raw)
    {
        return name;
    }
    strip_clone_suffix(raw).to_string()
}

/// The `::h0123456789abcdef` suffix of a Rust path, if there is one.
fn rust_hash_suffix(name: &str) -> Option<usize> {
    let i = name.len().checked_sub(19)?;
    let tail = name.get(i..)?;
    (tail.starts_with("::h") && tail[3..].bytes().all(|b| b.is_ascii_hexdigit())).then_some(i)
}

/// Decodes Rust's legacy symbol escapes (`$LT$` → `<`, `$u20$` → ` `, `..` → `::`) and drops
/// the hash.
fn decode_rust_legacy(name: &str) -> String {
    let name = match rust_hash_suffix(name) {
        Some(i) => &name[..i],
        None => name,
    };
    let mut out = String::with_capacity(name.len());
    for (i, part) in name.split("::").enumerate() {
        if i > 0 {
            out.push_str("::");
        }
        // A path component may start with `_$` where the escape would start it with `$`.
        let mut rest = part.strip_prefix("_$").map_or(part, |_| &part[1..]);
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('$') {
                if let Some(end) = after.find('$') {
                    let code = &after[..end];
                    let decoded = match code {
                        "SP" => Some('@'),
                        "BP" => Some('*'),
                        "RF" => Some('&'),
                        "LT" => Some('<'),
                        "GT" => Some('>'),
                        "LP" => Some('('),
                        "RP" => Some(')'),
                        "C" => Some(','),
                        _ => code
                            .strip_prefix('u')
                            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                            .and_then(char::from_u32),
                    };
                    if let Some(c) = decoded {
                        out.push(c);
                        rest = &after[end + 1..];
                        continue;
                    }
                }
                out.push('$');
                rest = after;
            } else if let Some(after) = rest.strip_prefix("..") {
                out.push_str("::");
                rest = after;
            } else {
                let next = rest
                    .find(['$', '.'])
                    .map(|i| if i == 0 { 1 } else { i })
                    .unwrap_or(rest.len());
                out.push_str(&rest[..next]);
                rest = &rest[next..];
            }
        }
    }
    out
}

/// Whether a legacy-mangled name ends in `17h<16 hex>E` (Rust's hash).
fn has_rust_hash(raw: &str) -> bool {
    let core = raw.split('.').next().unwrap_or(raw);
    let Some(body) = core.strip_suffix('E') else {
        return false;
    };
    body.len() > 19 && {
        let tail = &body[body.len() - 19..];
        tail.starts_with("17h") && tail[3..].bytes().all(|b| b.is_ascii_hexdigit())
    }
}

fn cpp_demangle_clean(raw: &str) -> Option<String> {
    // GCC clone suffixes confuse nothing in cpp_demangle, but drop them first anyway so
    // `f.constprop.0` and `f` merge.
    let base = strip_clone_suffix(raw);
    let sym = cpp_demangle::Symbol::new(base).ok()?;
    let opts = cpp_demangle::DemangleOptions::new()
        .no_params()
        .no_return_type();
    let text = sym.demangle_with_options(&opts).ok()?;
    Some(
        text.replace(" [clone", "\u{0}")
            .split('\u{0}')
            .next()
            .unwrap_or(&text)
            .trim()
            .to_string(),
    )
}

/// Drops GCC's `.constprop.N`, `.isra.N`, `.part.N`, `.cold`, `.lto_priv.N` suffixes.
fn strip_clone_suffix(name: &str) -> &str {
    const SUFFIXES: [&str; 6] = [
        ".constprop",
        ".isra",
        ".part",
        ".cold",
        ".lto_priv",
        ".localalias",
    ];
    let mut cut = name.len();
    for s in SUFFIXES {
        if let Some(i) = name.find(s) {
            // Only when the suffix is followed by the end or by a `.N` chain.
            let rest = &name[i + s.len()..];
            if rest.is_empty() || rest.starts_with('.') {
                cut = cut.min(i);
            }
        }
    }
    &name[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned() {
        assert_eq!(clean_name("spin_inner"), "spin_inner");
        assert_eq!(clean_name("spin_inner.constprop.0"), "spin_inner");
        assert_eq!(clean_name("main.cold"), "main");
        assert_eq!(
            clean_name("_ZN4demo6WorkerImE7recurseEmi"),
            "demo::Worker<unsigned long>::recurse"
        );
        assert_eq!(clean_name("_ZN4demo5outerEv"), "demo::outer");
        assert_eq!(
            clean_name("_ZN13rust_workload4spin5inner17h0123456789abcdefE"),
            "rust_workload::spin::inner"
        );
        assert_eq!(
            clean_name("_ZNSt6vectorIiSaIiEE9push_backERKi"),
            "std::vector<int, std::allocator<int> >::push_back"
        );
        assert_eq!(clean_name("_ZN4demo5outerEv.cold"), "demo::outer");
        assert_eq!(clean_name("_RNvCs1234_7mycrate4main"), "mycrate::main");
        assert_eq!(
            clean_name(
                "core::ops::function::FnOnce::call_once$u7b$$u7b$vtable.shim$u7d$$u7d$::h581c310980ce4441"
            ),
            "core::ops::function::FnOnce::call_once{{vtable.shim}}"
        );
        assert_eq!(
            clean_name(
                "_$LT$core..panic..AssertUnwindSafe$LT$F$GT$$u20$as$u20$core..ops..FnOnce$LT$$LP$$RP$$GT$$GT$::call_once::hb77ba2c0dd35ae49"
            ),
            "<core::panic::AssertUnwindSafe<F> as core::ops::FnOnce<()>>::call_once"
        );
    }

    #[test]
    fn long_generic_argument_lists_are_shortened_and_paths_kept() {
        // Short lists stay whole (the C++ workload's names among them).
        for name in [
            "demo::Worker<unsigned long>::recurse",
            "std::vector<int, std::allocator<int> >::push_back",
            "black_box<u64>",
            "core::iter::range::<impl core::iter::traits::iterator::Iterator for core::ops::range::Range<A>>::next",
            "operator<",
            "std::operator<< <std::char_traits<char> >",
        ] {
            assert_eq!(shorten_generics(name), name);
        }
        let closure = "catch_unwind<core::panic::unwind_safe::AssertUnwindSafe<std::thread::lifecycle::spawn_unchecked::{closure#1}::{closure_env#0}<fn(), ()>>, ()>";
        assert_eq!(shorten_generics(closure), "catch_unwind<...>");
        // A qualified-self type is a scope: kept, with its own long lists shortened.
        assert_eq!(
            shorten_generics(
                "<futures_util::future::Map<tokio::runtime::task::harness::Harness<alpha::Task, beta::Scheduler>, F> as core::future::Future>::poll"
            ),
            "<futures_util::future::Map<...> as core::future::Future>::poll"
        );
        assert_eq!(
            shorten_generics(
                "std::thread::_State_impl<std::thread::_Invoker<std::tuple<void (*)(alpha::Config const&), alpha::Config> > >::_M_run"
            ),
            "std::thread::_State_impl<...>::_M_run"
        );
        // `->` inside a list does not close it.
        assert_eq!(shorten_generics("f<fn() -> u8>"), "f<fn() -> u8>");
    }

    #[test]
    fn scopes_are_found_outside_argument_lists_only() {
        assert!(has_scope("alpha::Gear::poll"));
        assert!(has_scope("<T as Trait>::poll"));
        assert!(!has_scope("poll"));
        assert!(!has_scope("catch_unwind<core::panic::AssertUnwindSafe<F>>"));
        assert!(!has_scope("f<fn() -> alpha::X>"));
    }

    #[test]
    fn inlined_frames_take_the_scoped_name_of_their_own_call() {
        use blazesym::symbolize::InlinedFn;
        let frame = |name: &'static str| InlinedFn {
            name: name.into(),
            code_info: None,
            _non_exhaustive: (),
        };
        let call = |bare: &str, scoped: Option<&str>| InlinedName {
            bare: bare.into(),
            scoped: scoped.map(str::to_string),
        };
        let any = |_: &InlinedFn<'_>| true;
        let frames = [frame("_M_invoke<0>"), frame("operator()"), frame("getchar")];
        // As many calls as frames: by position, when the bare names agree.
        let calls = [
            call(
                "_M_invoke<0>",
                Some("std::thread::_Invoker<F>::_M_invoke<0>"),
            ),
            call("operator()", Some("main::{lambda()#1}::operator()")),
            call("getchar", None),
        ];
        assert_eq!(
            match_inlined(&frames, &calls, any),
            [
                Some("std::thread::_Invoker<F>::_M_invoke<0>".to_string()),
                Some("main::{lambda()#1}::operator()".to_string()),
                None
            ]
        );
        let swapped = [calls[1].clone(), calls[0].clone(), calls[2].clone()];
        assert_eq!(match_inlined(&frames, &swapped, any), [None, None, None]);
        // Otherwise each frame takes the next call of its name.
        let fewer = [call("operator()", Some("main::{lambda()#1}::operator()"))];
        assert_eq!(
            match_inlined(&frames, &fewer, any),
            [
                None,
                Some("main::{lambda()#1}::operator()".to_string()),
                None
            ]
        );
        // Frames that are not wanted (C, Rust) keep their names.
        assert_eq!(
            match_inlined(&frames, &calls, |f: &InlinedFn<'_>| f.name != "operator()"),
            [
                Some("std::thread::_Invoker<F>::_M_invoke<0>".to_string()),
                None,
                None
            ]
        );
    }

    #[test]
    fn bare_rust_frames_get_their_declaring_file() {
        use blazesym::symbolize::CodeInfo;
        use std::borrow::Cow;
        use std::ffi::OsStr;
        use std::path::Path;
        let code = |dir: &'static str, file: &'static str| CodeInfo {
            dir: Some(Cow::Borrowed(Path::new(dir))),
            file: Cow::Borrowed(OsStr::new(file)),
            line: Some(3),
            column: None,
            _non_exhaustive: (),
        };
        let alpha = code("/src/gears", "alpha.rs");
        assert_eq!(qualify_bare("poll".into(), Some(&alpha)), "poll (alpha.rs)");
        let nested = code("/build", "src/future/mod.rs");
        assert_eq!(
            qualify_bare("poll".into(), Some(&nested)),
            "poll (future/mod.rs)"
        );
        let split = code("/rustc/abc/library/core/src/future", "mod.rs");
        assert_eq!(
            qualify_bare("poll".into(), Some(&split)),
            "poll (future/mod.rs)"
        );
        // Scoped names, C and C++ sources and frames without a location stay as they are.
        assert_eq!(qualify_bare("a::poll".into(), Some(&alpha)), "a::poll");
        let c = code("/src", "workload.c");
        assert_eq!(qualify_bare("tokenize".into(), Some(&c)), "tokenize");
        let cpp = code("/usr/include/c++/12", "std_thread.h");
        assert_eq!(qualify_bare("_M_run".into(), Some(&cpp)), "_M_run");
        assert_eq!(qualify_bare("poll".into(), None), "poll");
    }
}
