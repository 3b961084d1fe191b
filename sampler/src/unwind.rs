//! Turning registers + stack memory into a list of return addresses, with DWARF CFI.
//!
//! [framehop] does the unwinding proper: for each address it finds the module, looks the address
//! up in `.eh_frame_hdr`/`.eh_frame` (or `.debug_frame`), and applies the CFI rule to recover
//! the caller's registers, falling back to the frame-pointer chain where no CFI is known. That
//! is what makes code without frame pointers (Debian's glibc, `-fomit-frame-pointer`, Rust
//! release builds) come out whole.
//!
//! What framehop leaves to us, and this module does, in two halves that run on different
//! threads:
//!
//! * **Knowing the modules** ([`ModuleLoader`], never on the tracer thread). For each process,
//!   every executable file mapping becomes a module with its address range and *bias* (where the
//!   file's addresses landed, PIE/ASLR). A file named by the target is opened only through
//!   [`target_file::open_mapped`] (regular file, the mapped device and inode, non-blocking) and
//!   read with plain reads, so a FIFO, a device or a file truncated under us costs only that
//!   module's frames. The vDSO has no file; its image is copied out of the process. Section data
//!   is cached per file *identity* (device, inode, size, mtime), so a library shared by many
//!   processes is read once, and a binary replaced on disk is read again. The result,
//!   [`ProcessModules`], is immutable and shared.
//! * **Unwinding** ([`UnwindCache`], on the tracer thread while the thread is stopped): the
//!   framehop unwinder of each process is built from its [`ProcessModules`] (memory only, no file
//!   I/O) and kept until the modules change; framehop's own rule cache makes repeated addresses
//!   nearly free.
//! * **Noticing new code.** When an address falls outside every known module (a library was
//!   `dlopen`ed since the maps were read), the sample is flagged so the caller re-reads the maps
//!   off the tracer thread and unwinds the copied stack again.

use super::elf::{self, UnwindSections};
use super::maps::{self, MapEntry};
use super::stack::Regs;
use super::target_file;
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};
use std::collections::HashMap;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

/// Section bytes as framehop holds them: shared, immutable.
type Bytes = Arc<[u8]>;

#[cfg(target_arch = "x86_64")]
type NativeUnwinder = framehop::x86_64::UnwinderX86_64<Bytes>;
#[cfg(target_arch = "x86_64")]
type NativeCache = framehop::x86_64::CacheX86_64;
#[cfg(target_arch = "aarch64")]
type NativeUnwinder = framehop::aarch64::UnwinderAarch64<Bytes>;
#[cfg(target_arch = "aarch64")]
type NativeCache = framehop::aarch64::CacheAarch64;

/// How many processes' modules (and unwinders) are kept; beyond this the least recently used
/// is dropped.
const MAX_PROCESSES: usize = 256;
/// How many distinct files' sections are kept.
const MAX_FILES: usize = 1024;

/// Identity of a file's contents as far as we can tell without hashing it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileKey {
    /// The identity of an open file.
    pub fn of(meta: &std::fs::Metadata) -> FileKey {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

/// The signature of the executable mappings, to tell whether a re-read maps file changed.
type MapsSignature = Vec<(u64, u64, u64, u64)>;

/// One module of a process, ready to become a framehop [`Module`].
#[derive(Debug)]
struct LoadedModule {
    name: String,
    range: Range<u64>,
    bias: u64,
    sections: Arc<UnwindSections>,
}

/// A process's modules as loaded (off the tracer thread) from its maps and files. Immutable:
/// a change of the maps produces a new value, which is how the tracer knows to rebuild.
#[derive(Debug, Default)]
pub struct ProcessModules {
    /// The process's start time, against pid reuse.
    pub starttime: u64,
    modules: Vec<LoadedModule>,
    /// Address ranges of the known modules, sorted.
    ranges: Vec<Range<u64>>,
    signature: MapsSignature,
}

impl ProcessModules {
    /// No modules: the unwinder reports the pc alone (used when loading failed or timed out).
    pub fn empty(starttime: u64) -> Arc<ProcessModules> {
        Arc::new(ProcessModules {
            starttime,
            ..Default::default()
        })
    }

    /// Whether `addr` lies in a known module.
    pub fn knows(&self, addr: u64) -> bool {
        let i = self.ranges.partition_point(|m| m.start <= addr);
        i > 0 && self.ranges[i - 1].contains(&addr)
    }
}

/// A stack as return addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawStack {
    /// Lookup addresses, innermost first: the pc, then each return address minus one (so that
    /// symbolization and inline information describe the call site, not the next statement).
    pub addrs: Vec<u64>,
    /// The unwind went deeper than the frame limit (only the innermost frames are kept).
    pub truncated: bool,
    /// Some address lay outside every known module: the maps may be stale.
    pub outside_modules: bool,
}

/// Loads processes' modules from their maps and files. Does file I/O on files a sampled process
/// names (safely, see [`target_file`]), so it never runs on the tracer thread.
#[derive(Default)]
pub struct ModuleLoader {
    files: HashMap<FileKey, Arc<UnwindSections>>,
    vdso: Option<(Vec<u8>, Arc<UnwindSections>)>,
    processes: HashMap<u32, (Arc<ProcessModules>, u64)>,
    clock: u64,
}

impl ModuleLoader {
    /// An empty loader.
    pub fn new() -> Self {
        Self::default()
    }

    /// The modules of `pid` (started at `starttime`), loaded unless known already. Fails only
    /// when the maps can not be read at all: the process is gone, or (`PermissionDenied`) the
    /// agent may not trace it.
    pub fn load(&mut self, pid: u32, starttime: u64) -> std::io::Result<Arc<ProcessModules>> {
        self.clock += 1;
        let clock = self.clock;
        if let Some((m, used)) = self.processes.get_mut(&pid)
            && m.starttime == starttime
        {
            *used = clock;
            return Ok(Arc::clone(m));
        }
        // Files and the vDSO are read through a live thread when the main thread has exited.
        let (live, entries) = maps::read_live_maps(pid)?;
        let loaded = Arc::new(self.load_from(live, starttime, &entries));
        self.remember(pid, &loaded);
        Ok(loaded)
    }

    /// Re-reads the maps of `pid` and loads its modules again if the executable mappings
    /// changed since `known`. `Some` with the new modules when they did (callers then unwind
    /// again).
    pub fn refresh(&mut self, pid: u32, known: &ProcessModules) -> Option<Arc<ProcessModules>> {
        let (live, entries) = maps::read_live_maps(pid).ok()?;
        if signature(&entries) == known.signature {
            return None;
        }
        let loaded = Arc::new(self.load_from(live, known.starttime, &entries));
        self.remember(pid, &loaded);
        Some(loaded)
    }

    fn remember(&mut self, pid: u32, loaded: &Arc<ProcessModules>) {
        if self.processes.len() >= MAX_PROCESSES
            && !self.processes.contains_key(&pid)
            && let Some((&oldest, _)) = self.processes.iter().min_by_key(|(_, (_, used))| *used)
        {
            self.processes.remove(&oldest);
        }
        self.processes.insert(pid, (Arc::clone(loaded), self.clock));
    }

    /// Builds the modules of `entries`; `pid` is the id whose `/proc` files reach the address
    /// space (the process, or a live thread of it: [`maps::read_live_maps`]).
    fn load_from(&mut self, pid: u32, starttime: u64, entries: &[MapEntry]) -> ProcessModules {
        let mut modules = Vec::new();
        let mut seen: Vec<(String, u64)> = Vec::new();
        for exec in entries.iter().filter(|e| e.exec) {
            let loaded = if exec.path == "[vdso]" {
                self.vdso_sections(pid, exec)
                    .map(|s| (s, "[vdso]".to_string(), exec.start..exec.end))
            } else if exec.is_file() {
                if seen
                    .iter()
                    .any(|(p, i)| *p == exec.path && *i == exec.inode)
                {
                    continue;
                }
                seen.push((exec.path.clone(), exec.inode));
                // The module spans every mapping of the same file.
                let same = |e: &&MapEntry| {
                    e.inode == exec.inode && e.dev == exec.dev && e.path == exec.path
                };
                let start = entries
                    .iter()
                    .filter(same)
                    .map(|e| e.start)
                    .min()
                    .unwrap_or(exec.start);
                let end = entries
                    .iter()
                    .filter(same)
                    .map(|e| e.end)
                    .max()
                    .unwrap_or(exec.end);
                self.file_sections(pid, exec)
                    .map(|s| (s, maps::basename(&exec.path).to_string(), start..end))
            } else {
                None
            };
            let Some((sections, name, range)) = loaded else {
                continue;
            };
            let Some(bias) = sections.bias(exec.start, exec.offset, true) else {
                continue;
            };
            tracing::trace!(
                pid,
                module = %name,
                range = format_args!("{:#x}..{:#x}", range.start, range.end),
                bias = format_args!("{bias:#x}"),
                eh_frame = sections.eh_frame.data.as_ref().map_or(0, |d| d.len()),
                eh_frame_hdr = sections.eh_frame_hdr.data.as_ref().map_or(0, |d| d.len()),
                debug_frame = sections.debug_frame.data.as_ref().map_or(0, |d| d.len()),
                "module"
            );
            modules.push(LoadedModule {
                name,
                range,
                bias,
                sections,
            });
        }
        let mut ranges: Vec<Range<u64>> = modules.iter().map(|m| m.range.clone()).collect();
        ranges.sort_by_key(|m| m.start);
        // Overlapping ranges (should not happen) would confuse the binary search; drop them.
        ranges.dedup_by(|later, earlier| later.start < earlier.end);
        ProcessModules {
            starttime,
            modules,
            ranges,
            signature: signature(entries),
        }
    }

    fn file_sections(&mut self, pid: u32, e: &MapEntry) -> Option<Arc<UnwindSections>> {
        let file = target_file::open_mapped(pid, e)?;
        let key = FileKey::of(&file.metadata().ok()?);
        if let Some(s) = self.files.get(&key) {
            return Some(Arc::clone(s));
        }
        let sections = match elf::read_unwind_sections(&object::ReadCache::new(&file)) {
            Ok(s) => Arc::new(s),
            Err(err) => {
                tracing::debug!(path = %e.path, %err, "no unwind data");
                Arc::new(UnwindSections::default())
            }
        };
        if self.files.len() >= MAX_FILES {
            self.files.clear();
        }
        self.files.insert(key, Arc::clone(&sections));
        Some(sections)
    }

    fn vdso_sections(&mut self, pid: u32, e: &MapEntry) -> Option<Arc<UnwindSections>> {
        let len = usize::try_from(e.end - e.start).ok()?.min(1 << 20);
        let image = super::stack::read_memory(nix::unistd::Pid::from_raw(pid as i32), e.start, len);
        if image.is_empty() {
            return None;
        }
        if let Some((cached_image, s)) = &self.vdso
            && *cached_image == image
        {
            return Some(Arc::clone(s));
        }
        let sections = Arc::new(elf::read_unwind_sections(&image[..]).ok()?);
        self.vdso = Some((image, Arc::clone(&sections)));
        Some(sections)
    }
}

/// One process's framehop unwinder, built from its modules.
struct ProcessUnwinder {
    modules: Arc<ProcessModules>,
    unwinder: NativeUnwinder,
    last_used: u64,
}

/// The tracer thread's unwinding state: per-process unwinders and framehop's rule cache. Holds
/// no files and opens none.
pub struct UnwindCache {
    processes: HashMap<u32, ProcessUnwinder>,
    rules: NativeCache,
    clock: u64,
}

impl Default for UnwindCache {
    fn default() -> Self {
        Self::new()
    }
}

impl UnwindCache {
    /// An empty cache.
    pub fn new() -> Self {
        UnwindCache {
            processes: HashMap::new(),
            rules: NativeCache::new(),
            clock: 0,
        }
    }

    /// Makes `modules` the ones `pid` is unwound with (rebuilding its unwinder only when they
    /// are not the ones it already has). Memory only.
    pub fn prepare(&mut self, pid: u32, modules: &Arc<ProcessModules>) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(p) = self.processes.get_mut(&pid)
            && Arc::ptr_eq(&p.modules, modules)
        {
            p.last_used = clock;
            return;
        }
        let mut unwinder = NativeUnwinder::new();
        for m in &modules.modules {
            let s = &m.sections;
            if !s.has_cfi() {
                continue;
            }
            let info = ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: s.text.svma.clone(),
                got_svma: s.got.svma.clone(),
                eh_frame_svma: s.eh_frame.svma.clone(),
                eh_frame: s.eh_frame.data.clone(),
                eh_frame_hdr_svma: s.eh_frame_hdr.svma.clone(),
                eh_frame_hdr: s.eh_frame_hdr.data.clone(),
                debug_frame: s.debug_frame.data.clone(),
                ..Default::default()
            };
            unwinder.add_module(Module::new(m.name.clone(), m.range.clone(), m.bias, info));
        }
        if self.processes.len() >= MAX_PROCESSES
            && !self.processes.contains_key(&pid)
            && let Some((&oldest, _)) = self.processes.iter().min_by_key(|(_, p)| p.last_used)
        {
            self.processes.remove(&oldest);
        }
        self.processes.insert(
            pid,
            ProcessUnwinder {
                modules: Arc::clone(modules),
                unwinder,
                last_used: clock,
            },
        );
    }

    /// Unwinds one stack. `read` answers 8-byte reads of stack memory. At most `max_frames`
    /// addresses are returned (innermost first); `truncated` says whether there were more.
    pub fn unwind(
        &mut self,
        pid: u32,
        regs: Regs,
        max_frames: usize,
        read: &mut dyn FnMut(u64) -> Result<u64, ()>,
    ) -> RawStack {
        let mut out = RawStack::default();
        let Some(process) = self.processes.get(&pid) else {
            out.addrs.push(regs.pc);
            return out;
        };
        #[cfg(target_arch = "x86_64")]
        let unwind_regs = framehop::x86_64::UnwindRegsX86_64::new(regs.pc, regs.sp, regs.fp);
        #[cfg(target_arch = "aarch64")]
        let unwind_regs = framehop::aarch64::UnwindRegsAarch64::new(regs.lr, regs.sp, regs.fp);
        let mut read_stack = |addr: u64| read(addr);
        let mut frames =
            process
                .unwinder
                .iter_frames(regs.pc, unwind_regs, &mut self.rules, &mut read_stack);
        loop {
            match frames.next() {
                Ok(Some(frame)) => {
                    if out.addrs.len() >= max_frames {
                        out.truncated = true;
                        break;
                    }
                    let addr = match frame {
                        FrameAddress::InstructionPointer(pc) => pc,
                        FrameAddress::ReturnAddress(_) => frame.address_for_lookup(),
                    };
                    if !process.modules.knows(addr) {
                        out.outside_modules = true;
                    }
                    tracing::trace!(pid, addr = format_args!("{addr:#x}"), "frame");
                    out.addrs.push(addr);
                }
                // Ok(None): the root was found. Err: the chain broke (unreadable memory, bad
                // CFI); what was found so far is still the best answer.
                Ok(None) => break,
                Err(err) => {
                    tracing::trace!(pid, %err, "unwinding stopped");
                    break;
                }
            }
        }
        out
    }
}

fn signature(entries: &[MapEntry]) -> MapsSignature {
    entries
        .iter()
        .filter(|e| e.exec)
        .map(|e| (e.start, e.end, e.offset, e.inode))
        .collect()
}

/// A sampled process is not trusted: it chooses its registers, its stack contents and the
/// files it maps. These properties feed the unwinder and the ELF reader with hostile input and
/// require an answer (possibly short or empty), never a panic or an endless walk.
#[cfg(test)]
mod hostile_input {
    use super::*;
    use proptest::prelude::*;

    /// Somewhere in this process's own code, so that some unwinds start in a real module and
    /// walk into the hostile stack.
    fn real_pc() -> u64 {
        real_pc as fn() -> u64 as usize as u64
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_registers_and_stack_give_a_bounded_stack(
            pc in prop_oneof![any::<u64>(), (0u64..4096).prop_map(|d| real_pc() + d)],
            sp: u64,
            fp: u64,
            words in proptest::collection::vec(
                prop_oneof![any::<u64>(), (0u64..4096).prop_map(|d| real_pc() + d)],
                0..64,
            ),
        ) {
            let pid = std::process::id();
            let starttime = super::super::proc::process_stat(pid).unwrap().starttime;
            let modules = ModuleLoader::new().load(pid, starttime).unwrap();
            let mut cache = UnwindCache::new();
            cache.prepare(pid, &modules);
            let regs = Regs { pc, sp, fp, lr: 0, interrupted_syscall: None };
            // Every read answers from the hostile words, cycling (a loop of frame pointers).
            let mut i = 0usize;
            let mut read = |_addr: u64| -> Result<u64, ()> {
                let w = words.get(i % words.len().max(1)).copied().ok_or(());
                i += 1;
                w
            };
            let stack = cache.unwind(pid, regs, 32, &mut read);
            prop_assert!(stack.addrs.len() <= 32);
            prop_assert!(!stack.addrs.is_empty(), "the pc itself is always reported");
        }

        #[test]
        fn damaged_elf_files_are_refused_or_read(
            flips in proptest::collection::vec((0usize..4096, any::<u8>()), 0..16),
            cut in prop_oneof![Just(usize::MAX), 0usize..40_000],
        ) {
            // A real, small ELF file, damaged where its headers live, and maybe truncated.
            let mut bytes = std::fs::read("/usr/bin/true").unwrap();
            for (at, value) in flips {
                if let Some(b) = bytes.get_mut(at) {
                    *b = value;
                }
            }
            bytes.truncate(cut);
            if let Ok(sections) = elf::read_unwind_sections(&bytes[..]) {
                // Whatever was read must be usable without panicking.
                let _ = sections.has_cfi();
                for seg in &sections.loads {
                    let _ = sections.bias(0x7f00_0000_0000, seg.offset, seg.exec);
                }
            }
        }
    }
}
