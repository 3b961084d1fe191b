//! From addresses to frame names: blazesym, demangling, and name cleanup.
//!
//! Symbolization is the expensive part of sampling (tens of milliseconds to parse a library's
//! DWARF the first time), so it happens **after** all samples of a run were taken, once per
//! distinct address, on a dedicated thread that keeps one long-lived [`blazesym`] symbolizer.
//! blazesym caches parsed files keyed by device/inode/size/mtime (so a replaced binary is read
//! again) and reads them through `/proc/<pid>/map_files` (or the process's root when the agent
//! lacks `CAP_SYS_ADMIN`), which makes processes in other mount namespaces work. The symbolizer
//! is not `Send`, which is one more reason it lives on a thread of its own.
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

use super::maps;
use flamegrid_model::Frame;
use std::collections::HashMap;
use std::sync::mpsc;

/// A batch: distinct addresses of one process.
struct Job {
    pid: u32,
    addrs: Vec<u64>,
    reply: mpsc::SyncSender<Vec<Vec<Frame>>>,
}

/// Handle on the symbolizer thread.
#[derive(Debug)]
pub struct SymbolizerThread {
    tx: std::sync::Mutex<mpsc::Sender<Job>>,
}

impl SymbolizerThread {
    /// Starts the thread.
    pub fn spawn() -> std::io::Result<SymbolizerThread> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("flamegrid-symbolizer".into())
            .spawn(move || serve(rx))?;
        Ok(SymbolizerThread {
            tx: std::sync::Mutex::new(tx),
        })
    }

    /// Frames for each address of `pid` (same order as `addrs`): each address becomes one or
    /// more frames, outermost first (the function, then the functions inlined into it).
    pub fn symbolize(&self, pid: u32, addrs: Vec<u64>) -> Vec<Vec<Frame>> {
        let fallback = |addrs: &[u64]| {
            addrs
                .iter()
                .map(|_| vec![Frame::named("[unknown]")])
                .collect()
        };
        let (reply, answer) = mpsc::sync_channel(1);
        let sent = {
            let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            tx.send(Job {
                pid,
                addrs: addrs.clone(),
                reply,
            })
        };
        if sent.is_err() {
            tracing::error!("the symbolizer thread is gone; frames stay unknown");
            return fallback(&addrs);
        }
        answer.recv().unwrap_or_else(|_| fallback(&addrs))
    }
}

fn serve(rx: mpsc::Receiver<Job>) {
    let mut symbolizer = new_symbolizer();
    let use_map_files = super::permission::have_cap_sys_admin();
    let mut pids_seen: std::collections::HashSet<u32> = Default::default();
    while let Ok(job) = rx.recv() {
        // blazesym keeps per-path state for every process it saw; start afresh now and then so
        // a long-lived agent sampling many short-lived processes does not grow without bound.
        pids_seen.insert(job.pid);
        if pids_seen.len() > 512 {
            symbolizer = new_symbolizer();
            pids_seen.clear();
        }
        let frames = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            symbolize_batch(&symbolizer, job.pid, &job.addrs, use_map_files)
        }))
        .unwrap_or_else(|_| {
            tracing::error!(pid = job.pid, "symbolizer panicked; frames stay unknown");
            job.addrs
                .iter()
                .map(|_| vec![Frame::named("[unknown]")])
                .collect()
        });
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

fn symbolize_batch(
    symbolizer: &blazesym::symbolize::Symbolizer,
    pid: u32,
    addrs: &[u64],
    use_map_files: bool,
) -> Vec<Vec<Frame>> {
    use blazesym::symbolize::source::{Process, Source};
    use blazesym::symbolize::{Input, Symbolized};
    let source_for = |map_files: bool| {
        let mut p = Process::new(blazesym::Pid::from(pid));
        p.map_files = map_files;
        Source::Process(p)
    };
    let mut result = symbolizer.symbolize(&source_for(use_map_files), Input::AbsAddr(addrs));
    if result.is_err() && use_map_files {
        result = symbolizer.symbolize(&source_for(false), Input::AbsAddr(addrs));
    }
    let maps = maps::read_maps(pid).unwrap_or_default();
    let unknown = |addr: u64| -> Vec<Frame> { vec![unknown_frame(&maps, addr)] };
    let symbolized = match result {
        Ok(s) => s,
        Err(err) => {
            tracing::debug!(pid, %err, "symbolization failed");
            return addrs.iter().map(|&a| unknown(a)).collect();
        }
    };
    addrs
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
            Symbolized::Unknown(_) => unknown(addr),
        })
        .collect()
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

/// Symbolizes the distinct addresses of one process and returns a lookup table.
pub fn table(
    thread: &SymbolizerThread,
    pid: u32,
    addrs: impl IntoIterator<Item = u64>,
) -> HashMap<u64, Vec<Frame>> {
    let mut unique: Vec<u64> = addrs.into_iter().collect();
    unique.sort_unstable();
    unique.dedup();
    if unique.is_empty() {
        return HashMap::new();
    }
    let frames = thread.symbolize(pid, unique.clone());
    unique.into_iter().zip(frames).collect()
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
