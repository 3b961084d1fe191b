//! Just enough ELF reading for the unwinder: the loadable segments (to compute where a file's
//! addresses landed in a process) and the unwind sections (`.eh_frame_hdr`, `.eh_frame`,
//! `.debug_frame`) plus the section addresses DWARF CFI pointers are relative to (`.text`,
//! `.got`).
//!
//! Only the few sections the unwinder needs are read (with positioned reads, not a whole-file
//! read or a memory map: a map of a file that is truncated under us would kill the agent with
//! SIGBUS, and reading glibc's 100 KiB of CFI costs well under a millisecond). Symbol tables and
//! DWARF debug info are blazesym's business, not this module's.

use std::ops::Range;
use std::sync::Arc;

/// A loadable segment (`PT_LOAD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    /// File offset of the segment's first byte.
    pub offset: u64,
    /// Address the segment was linked for.
    pub vaddr: u64,
    /// Bytes of the segment present in the file.
    pub filesz: u64,
    /// The segment is executable (`PF_X`).
    pub exec: bool,
}

/// A section's address range as linked (SVMA) and its bytes, when read.
#[derive(Debug, Clone, Default)]
pub struct Section {
    /// Address range as stated in the file.
    pub svma: Option<Range<u64>>,
    /// Contents (only for the sections whose bytes the unwinder needs).
    pub data: Option<Arc<[u8]>>,
}

/// What the unwinder needs from one ELF file.
#[derive(Debug, Clone, Default)]
pub struct UnwindSections {
    /// `PT_LOAD` segments.
    pub loads: Vec<LoadSegment>,
    /// `.text` (address only).
    pub text: Section,
    /// `.got` (address only).
    pub got: Section,
    /// `.eh_frame`.
    pub eh_frame: Section,
    /// `.eh_frame_hdr`.
    pub eh_frame_hdr: Section,
    /// `.debug_frame` (only read when there is no `.eh_frame`).
    pub debug_frame: Section,
}

impl UnwindSections {
    /// The bias (AVMA - SVMA) of a file whose byte `file_offset` is mapped at `map_start`, found
    /// through the `PT_LOAD` segment that contains that offset.
    ///
    /// Segments may share a file page (lld packs a read-only segment ending at 0x19148 next to
    /// the code segment starting at 0x19150, both in the page at 0x19000), so the segment that
    /// *starts* in the mapping's first page wins, an executable one first when `exec` is set;
    /// only then one that merely contains the offset.
    pub fn bias(&self, map_start: u64, file_offset: u64, exec: bool) -> Option<u64> {
        let starts_here = |s: &&LoadSegment| s.offset & !0xfff == file_offset;
        let seg = self
            .loads
            .iter()
            .filter(starts_here)
            .find(|s| s.exec == exec)
            .or_else(|| self.loads.iter().find(starts_here))
            .or_else(|| {
                self.loads.iter().find(|s| {
                    let page_start = s.offset & !0xfff;
                    file_offset >= page_start && file_offset < s.offset + s.filesz.max(1)
                })
            })?;
        // File offset x lives at vaddr + (x - offset); so map_start is svma vaddr + (off - offset).
        let svma = seg.vaddr.wrapping_add(file_offset).wrapping_sub(seg.offset);
        Some(map_start.wrapping_sub(svma))
    }

    /// Whether there is any CFI to unwind with.
    pub fn has_cfi(&self) -> bool {
        self.eh_frame.data.is_some() || self.debug_frame.data.is_some()
    }
}

/// Positioned reads from a file or from a byte buffer (the vDSO, copied out of a process).
pub trait ReadAt {
    /// Fills `buf` from `offset`, or fails.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| short())?;
        let src = self
            .get(start..start.checked_add(buf.len()).ok_or_else(short)?)
            .ok_or_else(short)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

fn short() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "ELF structure out of bounds",
    )
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("not a usable ELF file: {what}"),
    )
}

/// Largest section this module reads (a bound against corrupt headers).
const MAX_SECTION: u64 = 256 << 20;

fn u16_at(b: &[u8], o: usize) -> u16 {
    b.get(o..o + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    b.get(o..o + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

/// Reads the segments and unwind sections of a 64-bit little-endian ELF file.
pub fn read_unwind_sections<R: ReadAt + ?Sized>(src: &R) -> std::io::Result<UnwindSections> {
    let mut ehdr = [0u8; 64];
    src.read_exact_at(&mut ehdr, 0)?;
    if &ehdr[..4] != b"\x7fELF" {
        return Err(bad("no ELF magic"));
    }
    if ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(bad("not 64-bit little-endian"));
    }
    let phoff = u64_at(&ehdr, 32);
    let shoff = u64_at(&ehdr, 40);
    let phentsize = u16_at(&ehdr, 54) as usize;
    let phnum = u16_at(&ehdr, 56) as usize;
    let shentsize = u16_at(&ehdr, 58) as usize;
    let shnum = u16_at(&ehdr, 60) as usize;
    let shstrndx = u16_at(&ehdr, 62) as usize;

    let mut out = UnwindSections::default();
    if phentsize >= 56 && phnum > 0 && phnum < 4096 {
        let mut ph = vec![0u8; phentsize * phnum];
        src.read_exact_at(&mut ph, phoff)?;
        for i in 0..phnum {
            let p = &ph[i * phentsize..];
            const PT_LOAD: u32 = 1;
            if u32_at(p, 0) == PT_LOAD {
                const PF_X: u32 = 1;
                out.loads.push(LoadSegment {
                    offset: u64_at(p, 8),
                    vaddr: u64_at(p, 16),
                    filesz: u64_at(p, 32),
                    exec: u32_at(p, 4) & PF_X != 0,
                });
            }
        }
    }
    if shentsize < 64 || shnum == 0 || shnum >= 65280 || shstrndx >= shnum {
        // No section headers (stripped of them): nothing to unwind with, FP fallback only.
        return Ok(out);
    }
    let mut sh = vec![0u8; shentsize * shnum];
    src.read_exact_at(&mut sh, shoff)?;
    let hdr = |i: usize| &sh[i * shentsize..(i + 1) * shentsize];
    let strtab_hdr = hdr(shstrndx);
    let (str_off, str_size) = (u64_at(strtab_hdr, 24), u64_at(strtab_hdr, 32));
    if str_size > MAX_SECTION {
        return Err(bad("section name table too large"));
    }
    let mut names = vec![0u8; str_size as usize];
    src.read_exact_at(&mut names, str_off)?;
    let name_of = |off: u32| -> &[u8] {
        let rest = names.get(off as usize..).unwrap_or(&[]);
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    };

    let mut debug_frame_at = None;
    for i in 0..shnum {
        let h = hdr(i);
        const SHT_NOBITS: u32 = 8;
        let kind = u32_at(h, 4);
        let addr = u64_at(h, 16);
        let offset = u64_at(h, 24);
        let size = u64_at(h, 32);
        let svma = Some(addr..addr.saturating_add(size));
        let read = |want: bool| -> std::io::Result<Option<Arc<[u8]>>> {
            if !want || kind == SHT_NOBITS || size == 0 {
                return Ok(None);
            }
            if size > MAX_SECTION {
                return Err(bad("section too large"));
            }
            let mut data = vec![0u8; size as usize];
            src.read_exact_at(&mut data, offset)?;
            Ok(Some(data.into()))
        };
        match name_of(u32_at(h, 0)) {
            b".text" => out.text = Section { svma, data: None },
            b".got" => out.got = Section { svma, data: None },
            b".eh_frame" => {
                out.eh_frame = Section {
                    svma,
                    data: read(true)?,
                }
            }
            b".eh_frame_hdr" => {
                out.eh_frame_hdr = Section {
                    svma,
                    data: read(true)?,
                }
            }
            b".debug_frame" => debug_frame_at = Some(i),
            _ => {}
        }
    }
    // `.debug_frame` is only used when `.eh_frame` is missing; do not read it otherwise (it can
    // be large in binaries built with -g).
    if let (Some(i), None) = (debug_frame_at, &out.eh_frame.data) {
        let h = hdr(i);
        let (offset, size) = (u64_at(h, 24), u64_at(h, 32));
        if size > 0 && size <= MAX_SECTION {
            let mut data = vec![0u8; size as usize];
            src.read_exact_at(&mut data, offset)?;
            out.debug_frame = Section {
                svma: None,
                data: Some(data.into()),
            };
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_executable() {
        let exe = std::fs::File::open("/proc/self/exe").unwrap();
        let s = read_unwind_sections(&exe).unwrap();
        assert!(!s.loads.is_empty());
        assert!(s.eh_frame.data.is_some() && s.eh_frame_hdr.data.is_some());
        assert!(s.text.svma.is_some());
    }

    #[test]
    fn bias_follows_the_segment() {
        let s = UnwindSections {
            loads: vec![
                LoadSegment {
                    offset: 0,
                    vaddr: 0,
                    filesz: 0x1000,
                    exec: false,
                },
                LoadSegment {
                    offset: 0x1000,
                    vaddr: 0x1000,
                    filesz: 0x5000,
                    exec: true,
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            s.bias(0x5555_0000_1000, 0x1000, true),
            Some(0x5555_0000_0000)
        );
        let odd = UnwindSections {
            loads: vec![LoadSegment {
                offset: 0x1234,
                vaddr: 0x201234,
                filesz: 0x100,
                exec: true,
            }],
            ..Default::default()
        };
        assert_eq!(
            odd.bias(0x7000_0000_1000, 0x1000, true),
            Some(0x7000_0000_1000 - 0x201000)
        );
        // lld layout (the Rust workload): a read-only segment shares the code's first page.
        let lld = UnwindSections {
            loads: vec![
                LoadSegment {
                    offset: 0,
                    vaddr: 0,
                    filesz: 0x19148,
                    exec: false,
                },
                LoadSegment {
                    offset: 0x19150,
                    vaddr: 0x1a150,
                    filesz: 0x4ac60,
                    exec: true,
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            lld.bias(0x5620_6232_6000, 0x19000, true),
            Some(0x5620_6230_c000)
        );
        assert!(
            std::fs::File::open("/nonexistent").is_err()
                && [0u8; 4].read_exact_at(&mut [0u8; 8], 0).is_err()
        );
        assert!(read_unwind_sections(&[0u8; 100][..]).is_err());
    }
}
