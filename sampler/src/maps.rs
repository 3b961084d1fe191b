//! `/proc/<pid>/maps`: which file is mapped where in a process.
//!
//! The unwinder needs, for every executable mapping, the file it comes from and the *bias*
//! between the addresses the file was linked for (SVMAs) and where it lives in this process
//! (AVMAs; they differ because of PIE and ASLR). A line looks like
//!
//! ```text
//! 7f1c2a400000-7f1c2a428000 r--p 00000000 fe:01 1835203   /usr/lib/x86_64-linux-gnu/libc.so.6
//! ```
//!
//! The path may contain spaces and ends with ` (deleted)` when the file was replaced after it was
//! mapped; the file is then opened through `/proc/<pid>/map_files/` (the kernel keeps the old
//! inode alive) instead of by name.

use std::io;

/// One line of a maps file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    /// First address of the mapping.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Readable.
    pub read: bool,
    /// Executable.
    pub exec: bool,
    /// Offset in the file of `start`.
    pub offset: u64,
    /// Device number as `major:minor` text (only compared, never interpreted).
    pub dev: String,
    /// Inode of the file; 0 for anonymous mappings.
    pub inode: u64,
    /// Path or pseudo-name (`[vdso]`, `[stack]`, `[heap]`), empty for anonymous memory.
    pub path: String,
    /// The path carried the ` (deleted)` suffix (stripped from `path`).
    pub deleted: bool,
}

impl MapEntry {
    /// Whether this is a mapping of a real file (not anonymous, not a `[pseudo]` region).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }
}

/// Parses one maps line; `None` for a malformed line.
pub fn parse_line(line: &str) -> Option<MapEntry> {
    let mut rest = line;
    let mut field = || -> Option<&str> {
        let trimmed = rest.trim_start();
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (f, r) = trimmed.split_at(end);
        rest = r;
        (!f.is_empty()).then_some(f)
    };
    let range = field()?;
    let perms = field()?;
    let offset = field()?;
    let dev = field()?.to_string();
    let inode = field()?.parse().ok()?;
    let path = rest.trim_start();
    let (start, end) = range.split_once('-')?;
    let (path, deleted) = match path.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (path, false),
    };
    let perms = perms.as_bytes();
    Some(MapEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        read: perms.first() == Some(&b'r'),
        exec: perms.get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev,
        inode,
        path: path.to_string(),
        deleted,
    })
}

/// Reads and parses the maps of `pid`, through a live thread when the process's own file is
/// empty (see [`read_live_maps`]).
///
/// An `EACCES`/`EPERM` error means the agent may not trace the process (the kernel checks
/// ptrace access for `maps`); callers turn it into a permission refusal, never "gone".
pub fn read_maps(pid: u32) -> io::Result<Vec<MapEntry>> {
    read_live_maps(pid).map(|(_, entries)| entries)
}

/// The maps of `pid`, and the id whose `/proc/<id>/{maps,map_files,root,mem}` describe its
/// address space, in one pass over `/proc`.
///
/// The id is normally `pid` itself. But when the main thread has exited (`pthread_exit` in
/// `main`) while other threads run on, the leader is a zombie whose `maps` is empty and whose
/// `map_files` and memory are gone, although the process lives. Every thread shares the address
/// space, so the files of any live thread (`/proc/<tid>/...`, which the kernel serves for tids
/// too) answer instead. Falls back to `pid` (and its empty maps) when no thread has any.
pub fn read_live_maps(pid: u32) -> io::Result<(u32, Vec<MapEntry>)> {
    let entries = read_maps_of(pid)?;
    if !entries.is_empty() {
        return Ok((pid, entries));
    }
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Ok((pid, entries));
    };
    let live = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&tid| tid != pid)
        .find_map(|tid| {
            read_maps_of(tid)
                .ok()
                .filter(|maps| !maps.is_empty())
                .map(|maps| (tid, maps))
        });
    Ok(live.unwrap_or((pid, entries)))
}

fn read_maps_of(id: u32) -> io::Result<Vec<MapEntry>> {
    let text = std::fs::read_to_string(format!("/proc/{id}/maps"))?;
    Ok(text.lines().filter_map(parse_line).collect())
}

/// The file name part of a path (`libc.so.6` for `/usr/lib/x86_64-linux-gnu/libc.so.6`).
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_with_spaces_and_deleted_files() {
        let e = parse_line(
            "7f1c2a428000-7f1c2a5bd000 r-xp 00028000 fe:01 1835203   /usr/lib/my lib.so (deleted)",
        )
        .unwrap();
        assert_eq!(e.start, 0x7f1c2a428000);
        assert_eq!(e.end, 0x7f1c2a5bd000);
        assert!(e.exec && e.read);
        assert_eq!(e.offset, 0x28000);
        assert_eq!(e.inode, 1835203);
        assert_eq!(e.path, "/usr/lib/my lib.so");
        assert!(e.deleted && e.is_file());
        let anon = parse_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0 ").unwrap();
        assert!(!anon.is_file() && anon.path.is_empty());
        let vdso =
            parse_line("7ffd3000-7ffd5000 r-xp 00000000 00:00 0                  [vdso]").unwrap();
        assert_eq!(vdso.path, "[vdso]");
        assert_eq!(basename("/a/b/libc.so.6"), "libc.so.6");
    }
}

/// Property tests: maps lines come from another process's address space (paths may contain
/// spaces), so any text must parse to a value or `None`, and well-formed lines read back.
#[cfg(test)]
mod proptests {
    use super::parse_line;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,160}") {
            let _ = parse_line(&text);
        }

        #[test]
        fn well_formed_line_round_trips(
            start in any::<u64>(),
            end in any::<u64>(),
            offset in any::<u64>(),
            inode in any::<u64>(),
            read in any::<bool>(),
            exec in any::<bool>(),
            path in "(/[a-z0-9 ._-]{1,12}){0,3}",
            deleted in any::<bool>(),
        ) {
            let perms = format!("{}-{}p", if read { 'r' } else { '-' }, if exec { 'x' } else { '-' });
            let suffix = if deleted && !path.is_empty() { " (deleted)" } else { "" };
            let line = format!("{start:x}-{end:x} {perms} {offset:08x} fd:01 {inode} {path}{suffix}");
            let entry = parse_line(&line).expect("well-formed line parses");
            prop_assert_eq!(entry.start, start);
            prop_assert_eq!(entry.end, end);
            prop_assert_eq!(entry.offset, offset);
            prop_assert_eq!(entry.inode, inode);
            prop_assert_eq!(entry.read, read);
            prop_assert_eq!(entry.exec, exec);
            prop_assert_eq!(entry.dev.as_str(), "fd:01");
            prop_assert_eq!(entry.path.as_str(), path.trim_start());
            prop_assert_eq!(entry.deleted, !suffix.is_empty());
        }
    }
}
