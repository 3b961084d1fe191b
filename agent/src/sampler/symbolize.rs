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
//! Files are opened so that processes in other mount namespaces (containers) work: through
//! `/proc/<pid>/map_files` when the agent may read it (`CAP_SYS_ADMIN` or
//! `CAP_CHECKPOINT_RESTORE`); otherwise module by module through `/proc/<pid>/root<path>`
//! (the path as the *process* sees it, in its own mount namespace), or by the plain path when
//! the process shares the agent's mount namespace, so a library is parsed once for all
//! processes. A module that cannot be opened costs only its own frames (`module+0xoffset`),
//! never the rest of the batch. The symbolizer is not `Send`, which is one more reason it lives
//! on a thread of its own.
//!
//! Names are made to *aggregate*: a flame graph merges frames by name, so the same function must
//! get the same name in every sample, thread and host. Hence:
//!
//! * C++ is demangled without argument lists or return types (`demo::Worker<unsigned long>::recurse`);
//! * Rust is demangled without the `::h0123456789abcdef` hash (`rust_workload::spin::inner`);
//! * GCC's clone suffixes (`.constprop.0`, `.isra.0`, `.part.0`, `.cold`) are dropped, as a
//!   function split or specialised by the optimiser is still that function;
//! * functions DWARF says were inlined become frames of their own, marked `inlined`;
//! * an address without a symbol is `module+0xoffset` (file offset), or `[unknown]`.
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
//! ([`crate::memory::release_free_memory`]). What it keeps are the answers (`NameCache`):
//! frames per process and address, small and bounded. Stacks of a steady workload repeat, so
//! the next run mostly finds its addresses there; only an address never seen before makes the
//! thread build a new symbolizer and pay the cold parse (tens to a few hundred milliseconds).

use super::maps;
use flamegrid_model::Frame;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// Most addresses whose frames the [`NameCache`] keeps (all processes together); past it the
/// cache starts afresh. A frame list is ~100 bytes, so this bounds it to a few MiB, while a
/// real flame graph of a steady workload needs a few thousand.
const MAX_CACHED_ADDRESSES: usize = 65_536;

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

/// Handle on the symbolizer thread.
#[derive(Debug)]
pub struct SymbolizerThread {
    tx: std::sync::Mutex<mpsc::Sender<Job>>,
    /// Whether the thread holds a symbolizer (and its caches) right now.
    warm: Arc<AtomicBool>,
}

impl SymbolizerThread {
    /// Starts the thread; it drops its caches after `idle_release` without a batch.
    pub fn spawn(idle_release: Duration) -> std::io::Result<SymbolizerThread> {
        let (tx, rx) = mpsc::channel::<Job>();
        let warm = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&warm);
        std::thread::Builder::new()
            .name("flamegrid-symbolizer".into())
            .spawn(move || serve(rx, idle_release, &flag))?;
        Ok(SymbolizerThread {
            tx: std::sync::Mutex::new(tx),
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
    /// mapped files themselves through them. A run submits the addresses of its early rounds
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
        let sent = {
            let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            tx.send(Job {
                pid,
                starttime,
                addrs: addrs.clone(),
                maps: run_maps,
                reply,
            })
        };
        if sent.is_err() {
            tracing::error!("the symbolizer thread is gone; frames stay unknown");
        }
        PendingNames {
            addrs,
            answer: sent.is_ok().then_some(answer),
        }
    }
}

/// A batch handed to the symbolizer thread whose frames have not been collected yet.
#[derive(Debug)]
pub struct PendingNames {
    addrs: Vec<u64>,
    /// `None` when the batch could not be sent (the thread is gone).
    answer: Option<mpsc::Receiver<Vec<Vec<Frame>>>>,
}

impl PendingNames {
    /// Blocks until the batch is named: each address with its frames, outermost first;
    /// `[unknown]` for every address when the symbolizer thread is gone.
    pub fn wait(self) -> impl Iterator<Item = (u64, Vec<Frame>)> {
        let frames = self.answer.and_then(|answer| answer.recv().ok());
        let frames = frames.unwrap_or_else(|| {
            self.addrs
                .iter()
                .map(|_| vec![Frame::named("[unknown]")])
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
    let use_map_files =
        super::permission::have_cap_sys_admin() || super::permission::have_cap_checkpoint_restore();
    let mut pids_seen: std::collections::HashSet<u32> = Default::default();
    loop {
        let job = if symbolizer.is_some() {
            match rx.recv_timeout(idle_release) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    symbolizer = None;
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
        if pids_seen.len() > 512 {
            symbolizer = None;
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
                symbolize_batch(symbolizer, job.pid, &misses, use_map_files).or_else(|| {
                    // The process is gone (it exited during or right after the run): name
                    // the addresses from the files it had mapped.
                    symbolize_from_files(symbolizer, &job.maps, &misses, "")
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
/// With `use_map_files`, blazesym reads the whole process through `/proc/<pid>/map_files`.
/// Without it (or if that fails), each module is opened through the process's root
/// ([`process_root_prefix`]), so one unreadable module never fails the batch.
fn symbolize_batch(
    symbolizer: &blazesym::symbolize::Symbolizer,
    pid: u32,
    addrs: &[u64],
    use_map_files: bool,
) -> Option<Vec<Vec<Frame>>> {
    use blazesym::symbolize::source::{Process, Source};
    use blazesym::symbolize::{Input, Symbolized};
    // A process whose main thread exited is reached through one of its live threads.
    let (live, maps) = maps::read_live_maps(pid).ok()?;
    if !use_map_files {
        let root = process_root_prefix(live)?;
        return symbolize_from_files(symbolizer, &maps, addrs, &root);
    }
    let mut p = Process::new(blazesym::Pid::from(live));
    p.map_files = true;
    let symbolized = match symbolizer.symbolize(&Source::Process(p), Input::AbsAddr(addrs)) {
        Ok(s) => s,
        Err(err) => {
            tracing::debug!(pid, %err, "symbolization through map_files failed; per module");
            let root = process_root_prefix(live)?;
            return symbolize_from_files(symbolizer, &maps, addrs, &root);
        }
    };
    let unknown = |addr: u64| -> Vec<Frame> { vec![unknown_frame(&maps, addr)] };
    let frames = addrs
        .iter()
        .zip(symbolized)
        .map(|(&addr, sym)| match sym {
            Symbolized::Sym(sym) => {
                let module = sym
                    .module
                    .as_deref()
                    .map(|m| maps::basename(&m.to_string_lossy()).to_string())
                    .or_else(|| module_of(&maps, addr).map(str::to_string))
                    .unwrap_or_default();
                frames_of(&sym, module)
            }
            Symbolized::Unknown(_) => unknown(addr),
        })
        .collect();
    Some(frames)
}

/// The frames of one symbol: the function, then the functions inlined into it.
fn frames_of(sym: &blazesym::symbolize::Sym<'_>, module: String) -> Vec<Frame> {
    let mut frames = Vec::with_capacity(1 + sym.inlined.len());
    frames.push(Frame {
        name: clean_name(&sym.name),
        module: module.clone(),
        inlined: false,
    });
    for f in sym.inlined.iter() {
        frames.push(Frame {
            name: clean_name(&f.name),
            module: module.clone(),
            inlined: true,
        });
    }
    frames
}

/// Where the files a process maps are found from the agent: `""` when it shares the agent's
/// mount namespace (plain paths, so blazesym parses a shared library once for every process),
/// else `/proc/<pid>/root` (the process's own view of the file system). `None` when the
/// process is gone.
fn process_root_prefix(pid: u32) -> Option<String> {
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let ours = std::fs::read_link("/proc/self/ns/mnt").ok();
    let root = std::fs::read_link(format!("/proc/{pid}/root")).ok();
    if theirs.is_some() && theirs == ours && root.as_deref() == Some(std::path::Path::new("/")) {
        return Some(String::new());
    }
    std::fs::metadata(format!("/proc/{pid}/root")).ok()?;
    Some(format!("/proc/{pid}/root"))
}

/// Frames for addresses from the files mapped at them (`maps`): each address becomes a file
/// offset in its module, which blazesym resolves in that ELF file, opened as `root` + its path.
///
/// For a live process `root` is [`process_root_prefix`], so a process in another mount
/// namespace is named from its own files. For a process that no longer exists it is `""`: the
/// files are opened by their path in the agent's own namespace (the process's
/// `/proc/<pid>/root` went with it), so a process of another container keeps only
/// `module+0xoffset` names. A module that cannot be read keeps `module+0xoffset` names; the
/// others are still named. `None` when nothing could be named.
fn symbolize_from_files(
    symbolizer: &blazesym::symbolize::Symbolizer,
    run_maps: &[maps::MapEntry],
    addrs: &[u64],
    root: &str,
) -> Option<Vec<Vec<Frame>>> {
    use blazesym::symbolize::source::{Elf, Source};
    use blazesym::symbolize::{Input, Symbolized};
    let mut frames: Vec<Vec<Frame>> = addrs
        .iter()
        .map(|&a| vec![unknown_frame(run_maps, a)])
        .collect();
    // Addresses grouped by the mapping that holds them, as (index in `addrs`, file offset).
    let mut by_file: HashMap<&str, Vec<(usize, u64)>> = HashMap::new();
    for (i, &addr) in addrs.iter().enumerate() {
        if let Some(e) = run_maps
            .iter()
            .find(|e| e.start <= addr && addr < e.end && e.is_file() && !e.deleted)
        {
            by_file
                .entry(e.path.as_str())
                .or_default()
                .push((i, addr - e.start + e.offset));
        }
    }
    let mut named_any = false;
    for (path, wanted) in by_file {
        let offsets: Vec<u64> = wanted.iter().map(|&(_, off)| off).collect();
        let source = Source::Elf(Elf::new(format!("{root}{path}")));
        let symbolized = match symbolizer.symbolize(&source, Input::FileOffset(&offsets)) {
            Ok(s) => s,
            Err(err) => {
                tracing::debug!(path, root, %err, "module not symbolized");
                continue;
            }
        };
        let module = maps::basename(path).to_string();
        for (&(i, _), sym) in wanted.iter().zip(symbolized) {
            if let Symbolized::Sym(sym) = sym {
                frames[i] = frames_of(&sym, module.clone());
                named_any = true;
            }
        }
    }
    named_any.then_some(frames)
}

fn module_of(maps: &[maps::MapEntry], addr: u64) -> Option<&str> {
    let e = maps.iter().find(|e| e.start <= addr && addr < e.end)?;
    (!e.path.is_empty()).then(|| maps::basename(&e.path))
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
}
