//! Just enough ELF reading for the unwinder: the loadable segments (to compute where a file's
//! addresses landed in a process) and the unwind sections (`.eh_frame_hdr`, `.eh_frame`,
//! `.debug_frame`) plus the section addresses DWARF CFI pointers are relative to (`.text`,
//! `.got`).
//!
//! The ELF parsing itself is the `object` crate's. Only the headers and the few sections the
//! unwinder needs are read, through `object::ReadCache` (reads on demand, never a whole-file read
//! or a memory map: a map of a file that is truncated under us would kill the agent with SIGBUS,
//! and reading glibc's 100 KiB of CFI costs well under a millisecond). Symbol tables and DWARF
//! debug info are blazesym's business, not this module's.

use object::elf::{PF_X, PT_LOAD};
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Endianness, Object, ObjectSection, ReadRef};
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

fn bad(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("not a usable ELF file: {what}"),
    )
}

/// Largest section this module reads (a bound against corrupt headers).
const MAX_SECTION: u64 = 256 << 20;

/// Reads the segments and unwind sections of a 64-bit ELF file.
///
/// `data` is either a file behind `object::ReadCache` (reads on demand) or the bytes of an image
/// copied out of a process (the vDSO).
pub fn read_unwind_sections<'data, R: ReadRef<'data>>(data: R) -> std::io::Result<UnwindSections> {
    let elf = ElfFile64::<Endianness, R>::parse(data).map_err(bad)?;
    let endian = elf.endian();
    let mut out = UnwindSections::default();
    for ph in elf.elf_program_headers() {
        if ph.p_type(endian) == PT_LOAD {
            out.loads.push(LoadSegment {
                offset: ph.p_offset(endian),
                vaddr: ph.p_vaddr(endian),
                filesz: ph.p_filesz(endian),
                exec: ph.p_flags(endian) & PF_X != 0,
            });
        }
    }
    let section = |name: &str, read: bool| -> std::io::Result<Section> {
        let Some(sec) = elf.section_by_name(name) else {
            return Ok(Section::default());
        };
        let (addr, size) = (sec.address(), sec.size());
        let svma = Some(addr..addr.saturating_add(size));
        if !read || size == 0 {
            return Ok(Section { svma, data: None });
        }
        if size > MAX_SECTION {
            return Err(bad(format_args!("section {name} too large")));
        }
        // SHT_NOBITS sections have no bytes in the file: `data` is empty for them.
        let bytes = sec.data().map_err(bad)?;
        let data = (!bytes.is_empty()).then(|| Arc::<[u8]>::from(bytes));
        Ok(Section { svma, data })
    };
    out.text = section(".text", false)?;
    out.got = section(".got", false)?;
    out.eh_frame = section(".eh_frame", true)?;
    out.eh_frame_hdr = section(".eh_frame_hdr", true)?;
    // `.debug_frame` is only used when `.eh_frame` is missing; do not read it otherwise (it can
    // be large in binaries built with -g).
    if out.eh_frame.data.is_none() {
        out.debug_frame = section(".debug_frame", true)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_executable() {
        let exe = std::fs::File::open("/proc/self/exe").unwrap();
        let s = read_unwind_sections(&object::ReadCache::new(&exe)).unwrap();
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
        assert!(read_unwind_sections(&[0u8; 100][..]).is_err());
        assert!(
            read_unwind_sections(&b"\x7fELF\x02\x01"[..]).is_err(),
            "truncated header"
        );
    }
}
