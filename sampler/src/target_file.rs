//! Opening the files a sampled process names, without letting that process stall or crash us.
//!
//! A process chooses the files it maps, and it can change them afterwards. The agent reads those
//! files to unwind (CFI) and to name frames (symbols, DWARF), so each of these is an attack:
//!
//! * **A FIFO where the library was** (at the path, or at `path (deleted)` as `/proc/PID/maps`
//!   shows a replaced file). A plain `open()` for reading waits for a writer — forever. A device
//!   node is no better (its open has side effects or blocks).
//! * **A file truncated while it is mapped** (a deploy copying over a running library). Reading a
//!   memory map of it past the new end raises SIGBUS, which kills the whole agent.
//! * **Links that point elsewhere**: `.gnu_debuglink`, `.gnu_debugaltlink` and `.debug_sup` name
//!   further files that a symbolizer opens by path; an absolute or `../` name leads it to any
//!   file of the attacker's choosing, a FIFO included.
//!
//! So, here:
//!
//! 1. [`open_mapped`] opens a mapping's file with `O_PATH` first, which opens nothing (no FIFO
//!    wait, no device open), checks with `fstat` that it is a **regular file** whose **device and
//!    inode are the ones the maps line lists** for that mapping, and only then reopens that very
//!    inode for reading through `/proc/self/fd`, non-blocking. Anything else is refused: the
//!    frames of that module stay `module+0xoffset`.
//! 2. The unwinder reads such files with plain reads (`object::ReadCache`), never a map, so a
//!    file that shrinks gives short reads, not a signal.
//! 3. blazesym maps whole files, so it never sees a target's file: [`sealed_copy`] copies it into
//!    a memfd with its debug links neutralised when they could lead outside the debug
//!    directories, then seals it against shrinking and writing. A sealed memfd can not shrink,
//!    so its map can not fault.
//! 4. None of this runs on the tracer thread (`ptrace.rs`), and callers wait for the threads
//!    that do it with a deadline ([`super::workers`]), so even a file system that never answers
//!    (a hostile FUSE mount) costs a run its names, never the agent its sampling.

use super::maps::MapEntry;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

/// The largest file [`sealed_copy`] copies. Real binaries with full debug information reach a
/// few hundred MiB; a bigger "library" is more likely an attempt to exhaust memory.
pub const MAX_COPY_BYTES: u64 = 1 << 30;

/// Where blazesym looks for separate debug files; the only absolute places a copied file's
/// debug links may point to.
const TRUSTED_DEBUG_DIRS: [&str; 2] = ["/usr/lib/debug/", "/lib/debug/"];

/// The file behind mapping `e` of process `pid`, if it is still the mapped file: through
/// `/proc/<pid>/map_files/` (works for deleted files and other mount namespaces, needs
/// CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE), else through the process's root directory. `None`
/// when neither is the regular file with the mapping's device and inode.
pub fn open_mapped(pid: u32, e: &MapEntry) -> Option<File> {
    let identity = MappedIdentity::of(e)?;
    let map_files = format!("/proc/{pid}/map_files/{:x}-{:x}", e.start, e.end);
    match open_verified(&map_files, identity) {
        Ok(file) => return Some(file),
        Err(err) => tracing::trace!(path = %map_files, %err, "map_files not usable"),
    }
    let by_root = format!("/proc/{pid}/root{}", e.path);
    match open_verified(&by_root, identity) {
        Ok(file) => Some(file),
        Err(err) => {
            tracing::debug!(pid, path = %e.path, %err, "mapped file not opened");
            None
        }
    }
}

/// Device and inode of a mapping, as its maps line states them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedIdentity {
    major: u64,
    minor: u64,
    inode: u64,
}

impl MappedIdentity {
    /// From a maps line (`fe:01 1835203`); `None` for anonymous memory or a malformed device.
    pub fn of(e: &MapEntry) -> Option<MappedIdentity> {
        if !e.is_file() {
            return None;
        }
        let (major, minor) = e.dev.split_once(':')?;
        Some(MappedIdentity {
            major: u64::from_str_radix(major, 16).ok()?,
            minor: u64::from_str_radix(minor, 16).ok()?,
            inode: e.inode,
        })
    }

    fn matches(&self, meta: &std::fs::Metadata) -> bool {
        let dev = meta.dev();
        u64::from(libc::major(dev)) == self.major
            && u64::from(libc::minor(dev)) == self.minor
            && meta.ino() == self.inode
    }
}

/// Opens `path` for reading only if it is a regular file with `identity` (see the module docs);
/// never waits on a FIFO and never opens a device.
pub fn open_verified(path: &str, identity: MappedIdentity) -> io::Result<File> {
    // O_PATH resolves the name to an inode without opening the file itself.
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)?;
    let meta = handle.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if !identity.matches(&meta) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not the mapped file (device or inode differ)",
        ));
    }
    // Reopen that same inode (the handle pins it) for reading.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))?;
    let reopened = file.metadata()?;
    if !reopened.file_type().is_file() || !identity.matches(&reopened) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the file changed while it was opened",
        ));
    }
    Ok(file)
}

/// A private, sealed copy of `file` (at most [`MAX_COPY_BYTES`]) in a memfd, for a reader that
/// maps whole files (blazesym): it can not shrink or change under that map. Debug links that
/// could lead outside the debug directories are overwritten in the copy ([`neutralize_links`]).
pub fn sealed_copy(file: &File) -> io::Result<File> {
    let size = file.metadata()?.len();
    if size > MAX_COPY_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{size} bytes is larger than the {MAX_COPY_BYTES} bytes copied"),
        ));
    }
    // SAFETY: memfd_create with a NUL-terminated name; the returned fd is ours alone.
    let fd = unsafe {
        libc::memfd_create(
            c"flamegrid-module".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let mut copy = unsafe { File::from_raw_fd(fd) };
    // Reads stop at the size seen above: a file that grows meanwhile is cut, one that shrinks
    // gives a shorter copy (whose parse then fails cleanly).
    io::copy(&mut file.take(size), &mut copy)?;
    neutralize_links(&copy)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on our own fd.
    if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(copy)
}

/// Overwrites (with `x`, same length) the names in `.gnu_debuglink`, `.gnu_debugaltlink` and
/// `.debug_sup` of an ELF copy unless they are safe: a plain file name (no `/`, not hidden, not
/// a number, which `/proc/self/fd/` would resolve to one of our own descriptors), or, for the
/// two supplementary-file links, an absolute path inside a debug directory without `..`. A file
/// that is not ELF is left alone (nothing will parse it as one).
pub fn neutralize_links(copy: &File) -> io::Result<()> {
    use object::read::elf::ElfFile64;
    use object::{Endianness, Object, ObjectSection};
    let mut patches: Vec<(u64, usize)> = Vec::new();
    {
        let cache = object::ReadCache::new(copy);
        let Ok(elf) = ElfFile64::<Endianness, _>::parse(&cache) else {
            return Ok(());
        };
        for (section, prefix, path_allowed) in [
            (".gnu_debuglink", 0usize, false),
            (".gnu_debugaltlink", 0, true),
            // version (2 bytes) and is_supplementary (1 byte) precede the file name.
            (".debug_sup", 3, true),
        ] {
            let Some(sec) = elf.section_by_name(section) else {
                continue;
            };
            let (Some((offset, _)), Ok(data)) = (sec.file_range(), sec.data()) else {
                continue;
            };
            let Some(rest) = data.get(prefix..) else {
                continue;
            };
            let len = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            if len > 0 && !safe_link(&rest[..len], path_allowed) {
                patches.push((offset + prefix as u64, len));
            }
        }
    }
    for (at, len) in patches {
        tracing::debug!(
            at,
            len,
            "neutralised a debug link of a sampled process's file"
        );
        copy.write_all_at(&vec![b'x'; len], at)?;
    }
    Ok(())
}

fn safe_link(name: &[u8], path_allowed: bool) -> bool {
    let Ok(name) = std::str::from_utf8(name) else {
        return false;
    };
    let plain = name.len() <= 255
        && !name.contains('/')
        && !name.starts_with('.')
        && !name.bytes().all(|b| b.is_ascii_digit());
    let in_debug_dir = path_allowed
        && TRUSTED_DEBUG_DIRS.iter().any(|d| name.starts_with(d))
        && !name.split('/').any(|c| c == "..");
    plain || in_debug_dir
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn entry_of(path: &std::path::Path) -> MapEntry {
        let meta = std::fs::metadata(path).unwrap();
        MapEntry {
            start: 0x1000,
            end: 0x2000,
            read: true,
            exec: true,
            offset: 0,
            dev: format!(
                "{:02x}:{:02x}",
                libc::major(meta.dev()),
                libc::minor(meta.dev())
            ),
            inode: meta.ino(),
            path: path.to_string_lossy().into_owned(),
            deleted: false,
        }
    }

    #[test]
    fn a_fifo_is_refused_at_once_and_a_regular_file_opened() {
        let dir = std::env::temp_dir().join(format!("fg-tf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("lib.so");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let id = MappedIdentity::of(&entry_of(&fifo)).unwrap();
        // With no writer, a blocking open would never return; this must refuse.
        let err = open_verified(&fifo.to_string_lossy(), id).unwrap_err();
        assert!(err.to_string().contains("regular"), "{err}");
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let id = MappedIdentity::of(&entry_of(&exe)).unwrap();
        assert!(open_verified(&exe.to_string_lossy(), id).is_ok());
        // Another file's identity does not open this one.
        let other = MappedIdentity {
            inode: id.inode ^ 1,
            ..id
        };
        assert!(open_verified(&exe.to_string_lossy(), other).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn debug_links_are_judged() {
        assert!(safe_link(b"0123abcd.debug", false));
        assert!(safe_link(b"libc.so.6.debug", false));
        assert!(!safe_link(b"/tmp/fifo", false));
        assert!(!safe_link(b"../../../tmp/fifo", false));
        assert!(!safe_link(b"7", false), "a number names one of our fds");
        assert!(!safe_link(b"..", false));
        assert!(safe_link(
            b"/usr/lib/debug/.dwz/x86_64-linux-gnu/libc6.debug",
            true
        ));
        assert!(!safe_link(b"/usr/lib/debug/../../../tmp/x", true));
        assert!(!safe_link(b"/usr/lib/debug/x", false));
    }

    #[test]
    fn copies_are_sealed_and_equal() {
        let exe = File::open("/proc/self/exe").unwrap();
        let copy = sealed_copy(&exe).unwrap();
        assert_eq!(
            copy.metadata().unwrap().len(),
            exe.metadata().unwrap().len()
        );
        // SAFETY: ftruncate on our own fd; the seal must refuse it.
        let rc = unsafe { libc::ftruncate(copy.as_raw_fd(), 0) };
        assert_ne!(rc, 0, "a sealed copy must not shrink");
    }
}
