//! Full names for inlined C++ frames that DWARF records by their bare name only.
//!
//! GCC gives most functions a `DW_AT_linkage_name`, which demangles to the full path, and
//! blazesym names frames by it. Some inlined functions have none: lambdas' call operators
//! (`operator()`) and inlined template members (`std::thread::_Invoker<…>::_M_invoke<0>`)
//! are recorded by their bare `DW_AT_name`, and their scope exists only as the DIE tree
//! around their declaration: the namespaces, classes and (for a lambda's nameless class) the
//! function they sit in. Two lambdas of two functions would both be `operator()`, one node in
//! a flame graph. This module reads that tree, the way gdb does, and answers
//! `alpha::turn::{lambda()#1}::operator()` for them.
//!
//! What is read, and when:
//!
//! * only modules whose frames include such a bare inlined name, and only their compile units
//!   that hold the address and say they are C++ (`DW_AT_language`);
//! * the module's own DWARF, from the sealed copy symbolization already made (never a file the
//!   target names, never a separate debug file: libraries whose DWARF lives in a `-dbg`
//!   package keep the bare names). The copy is a memfd sealed against writing and shrinking,
//!   so it is mapped and read in place (no second copy on the heap; a file that is not sealed
//!   is not mapped at all): `.debug_info`, `.debug_abbrev`, the string and range sections,
//!   `.debug_aranges` (which unit holds an address). Compressed sections are not inflated;
//!   their units keep the bare names;
//! * per unit, once, a compact table of its scope entries (namespaces, classes, functions)
//!   and inlined call ranges, so later batches only look things up.
//!
//! Everything lives in a [`ScopeCache`] that the symbolizer thread drops with its other caches
//! (see the memory section of [`super::symbolize`]), bounded by [`MAX_CACHED_ENTRIES`].
//! Nothing here recurses: the tree is walked with an explicit stack and every chain of links
//! and parents is followed at most [`MAX_SCOPE_STEPS`] steps, so a hostile binary with cyclic
//! or absurdly deep entries costs a frame its scope, never a hang. Malformed DWARF costs the
//! unit (or file) its scopes; the frames keep their bare names.
//!
//! Names follow the frame naming rules: no argument lists (`alpha::turn`, not
//! `alpha::turn()`), a nameless namespace is `(anonymous namespace)` as in gdb and the
//! demangler, a lambda's class is `{lambda()#N}` as in demangled symbols (the N-th lambda
//! without parameters of its function; lambdas with parameters are `{lambda(...)#N}`, counted
//! apart), another nameless class `{unnamed type#N}`.

use super::unwind::FileKey;
use gimli::{EndianSlice, RunTimeEndian, SectionId};
use std::collections::HashMap;
use std::fs::File;

/// Most links (`DW_AT_specification`, `DW_AT_abstract_origin`) and parents followed for one
/// name. Real C++ nests a handful deep; a chain longer than this is malformed or hostile.
pub const MAX_SCOPE_STEPS: usize = 64;

/// Most scope entries and inlined ranges kept for all files together (about 50 bytes each, so
/// a few tens of MiB at most); past it the parsed units start afresh. One unit with more than
/// this is not read at all.
pub const MAX_CACHED_ENTRIES: usize = 1 << 20;

/// Most inlined calls reported for one address. Real code nests a few dozen deep at most;
/// a hostile file with thousands of overlapping ranges gets its first ones named, no more.
const MAX_INLINED_CALLS: usize = 256;

/// Reader over the mapped sections.
type Reader<'a> = EndianSlice<'a, RunTimeEndian>;

/// Scope tables per module file (by identity), filled on demand.
#[derive(Default)]
pub struct ScopeCache {
    /// `None`: the file has no usable DWARF; not tried again.
    files: HashMap<FileKey, Option<FileScopes>>,
    /// Entries in all parsed units (for [`MAX_CACHED_ENTRIES`]).
    entries: usize,
}

impl ScopeCache {
    /// The inlined calls at `svma` (an address as linked, in the file `copy` with identity
    /// `key`), outermost first: each with its bare name and, where the DIE tree has one, its
    /// full name. Empty when the file has no DWARF, the address no C++ unit, or the unit is
    /// malformed.
    pub fn inlined_at(&mut self, key: &FileKey, copy: &File, svma: u64) -> Vec<InlinedName> {
        let file = self
            .files
            .entry(key.clone())
            .or_insert_with(|| FileScopes::read(copy));
        let Some(file) = file else {
            return Vec::new();
        };
        let Some(unit) = file.unit_of(svma) else {
            return Vec::new();
        };
        if !file.parsed.contains_key(&unit) {
            let parsed = file.parse_unit(unit);
            let size = parsed.as_ref().map_or(0, UnitScopes::entries);
            if self.entries + size > MAX_CACHED_ENTRIES {
                for other in self.files.values_mut().flatten() {
                    other.parsed.clear();
                }
                self.entries = 0;
            }
            self.entries += size;
            if let Some(Some(file)) = self.files.get_mut(key) {
                file.parsed.insert(unit, parsed);
            }
        }
        match self.files.get(key) {
            Some(Some(file)) => file.names_at(unit, svma),
            _ => Vec::new(),
        }
    }
}

/// One inlined call at an address: the function's bare DWARF name and its scoped name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlinedName {
    /// `DW_AT_name` as DWARF has it (what blazesym reports).
    pub bare: String,
    /// `scope::bare`, when the DIE tree gives a scope.
    pub scoped: Option<String>,
}

/// One file's DWARF sections and what was parsed from them.
struct FileScopes {
    /// The sealed copy, mapped: the sections are read in place, no copy on the heap.
    map: memmap2::Mmap,
    /// Where each section is in `map`.
    sections: HashMap<SectionId, std::ops::Range<usize>>,
    endian: RunTimeEndian,
    /// Address ranges of units, sorted: (begin, end, `.debug_info` offset of the unit).
    units: Vec<(u64, u64, usize)>,
    /// Parsed units by `.debug_info` offset; `None`: not C++ or malformed.
    parsed: HashMap<usize, Option<UnitScopes>>,
}

/// The DWARF sections this module reads.
const SECTIONS: [SectionId; 10] = [
    SectionId::DebugInfo,
    // Not for line numbers: gimli reads each unit's line program header with the unit.
    SectionId::DebugLine,
    SectionId::DebugAbbrev,
    SectionId::DebugStr,
    SectionId::DebugLineStr,
    SectionId::DebugStrOffsets,
    SectionId::DebugAddr,
    SectionId::DebugRanges,
    SectionId::DebugRngLists,
    SectionId::DebugAranges,
];

impl FileScopes {
    /// Maps the sealed `copy`, finds its DWARF sections and indexes its units by address.
    /// `None` without `.debug_info`, or for a file that is not a sealed copy.
    fn read(copy: &File) -> Option<FileScopes> {
        use object::{Object, ObjectSection};
        let map = map_sealed(copy)?;
        let elf = object::File::parse(&*map).ok()?;
        let mut sections = HashMap::new();
        for id in SECTIONS {
            let Some(range) = elf
                .section_by_name(id.name())
                .and_then(|s| s.compressed_file_range().ok())
            else {
                continue;
            };
            // Compressed sections are not inflated here (no zlib in the agent): they read as
            // absent, and the unit keeps its bare names.
            if range.format != object::CompressionFormat::None {
                continue;
            }
            let start = usize::try_from(range.offset).ok()?;
            let end = start.checked_add(usize::try_from(range.uncompressed_size).ok()?)?;
            if end <= map.len() {
                sections.insert(id, start..end);
            }
        }
        sections.get(&SectionId::DebugInfo)?;
        let endian = if elf.is_little_endian() {
            RunTimeEndian::Little
        } else {
            RunTimeEndian::Big
        };
        let mut file = FileScopes {
            map,
            sections,
            endian,
            units: Vec::new(),
            parsed: HashMap::new(),
        };
        file.units = file.unit_ranges()?;
        Some(file)
    }

    fn dwarf(&self) -> gimli::Dwarf<Reader<'_>> {
        let section = |id: SectionId| -> Result<Reader<'_>, std::convert::Infallible> {
            let data = self
                .sections
                .get(&id)
                .and_then(|range| self.map.get(range.clone()))
                .unwrap_or_default();
            Ok(EndianSlice::new(data, self.endian))
        };
        match gimli::Dwarf::load(section) {
            Ok(dwarf) => dwarf,
            Err(never) => match never {},
        }
    }

    /// Which unit holds which addresses: `.debug_aranges`, else each unit's own ranges.
    fn unit_ranges(&self) -> Option<Vec<(u64, u64, usize)>> {
        let dwarf = self.dwarf();
        let mut units = Vec::new();
        let mut headers = dwarf.debug_aranges.headers();
        while let Ok(Some(header)) = headers.next() {
            let unit = header.debug_info_offset().0;
            let mut entries = header.entries();
            while let Ok(Some(entry)) = entries.next() {
                let range = entry.range();
                if range.begin < range.end {
                    units.push((range.begin, range.end, unit));
                }
            }
            if units.len() > MAX_CACHED_ENTRIES {
                return None;
            }
        }
        if units.is_empty() {
            let mut headers = dwarf.units();
            while let Ok(Some(header)) = headers.next() {
                let Some(offset) = header.debug_info_offset() else {
                    continue;
                };
                let Ok(unit) = dwarf.unit(header) else {
                    continue;
                };
                let Ok(mut ranges) = dwarf.unit_ranges(&unit) else {
                    continue;
                };
                while let Ok(Some(range)) = ranges.next() {
                    if range.begin < range.end {
                        units.push((range.begin, range.end, offset.0));
                    }
                }
                if units.len() > MAX_CACHED_ENTRIES {
                    return None;
                }
            }
        }
        units.sort_unstable();
        Some(units)
    }

    /// The unit whose ranges hold `svma`.
    fn unit_of(&self, svma: u64) -> Option<usize> {
        let after = self.units.partition_point(|&(begin, _, _)| begin <= svma);
        self.units[..after]
            .iter()
            .rev()
            .take(16)
            .find(|&&(_, end, _)| svma < end)
            .map(|&(_, _, unit)| unit)
    }

    fn parse_unit(&self, offset: usize) -> Option<UnitScopes> {
        let dwarf = self.dwarf();
        let header = dwarf
            .debug_info
            .header_from_offset(gimli::DebugInfoOffset(offset))
            .ok()?;
        let unit = dwarf.unit(header).ok()?;
        UnitScopes::parse(&dwarf, &unit)
    }

    fn names_at(&self, unit: usize, svma: u64) -> Vec<InlinedName> {
        match self.parsed.get(&unit) {
            Some(Some(scopes)) => scopes.names_at(svma),
            _ => Vec::new(),
        }
    }
}

/// Maps `file` if it is sealed against shrinking and writing (the symbolizer's copies are):
/// its bytes can then neither change nor go away under the map, so reading it can not fault.
fn map_sealed(file: &File) -> Option<memmap2::Mmap> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on an open descriptor; it only reads the seals.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    let needed = libc::F_SEAL_SHRINK | libc::F_SEAL_WRITE;
    if seals < 0 || seals & needed != needed {
        return None;
    }
    // SAFETY: the file is sealed against shrinking and writing (checked above), so the mapped
    // bytes stay as they are for as long as the map lives.
    unsafe { memmap2::Mmap::map(file) }.ok()
}

/// The scope entries and inlined calls of one C++ unit.
struct UnitScopes {
    /// Namespaces, classes and functions, in DIE order (so sorted by offset).
    nodes: Vec<Node>,
    /// Inlined call ranges, sorted by start address.
    inlined: Vec<InlinedRange>,
    /// The longest inlined range (bounds the backwards scan in [`Self::names_at`]).
    longest: u64,
}

struct Node {
    offset: usize,
    /// Index of the nearest enclosing node (lexical blocks and the like are skipped).
    parent: Option<usize>,
    kind: Kind,
    name: Option<Box<str>>,
    link: Link,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Namespace,
    /// A class, structure or union; for a nameless one, whether it is a lambda's class and
    /// whether its call operator takes parameters.
    Type {
        lambda: Option<bool>,
    },
    Function,
}

/// Where `DW_AT_specification` / `DW_AT_abstract_origin` leads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Link {
    None,
    /// An entry of the same unit.
    Local(usize),
    /// Another unit (not followed: the frame keeps its bare name).
    Foreign,
}

struct InlinedRange {
    begin: u64,
    end: u64,
    /// Tree depth: nested inlined calls are deeper.
    depth: isize,
    /// The inlined function's entry (`DW_AT_abstract_origin`).
    origin: usize,
}

impl UnitScopes {
    fn entries(&self) -> usize {
        self.nodes.len() + self.inlined.len()
    }

    /// Reads the unit's tree once, iteratively. `None` for a unit that is not C++ or is
    /// malformed, or is larger than [`MAX_CACHED_ENTRIES`].
    // gimli's DWARF constants keep the standard's spelling (`DW_TAG_subprogram`).
    #[allow(non_upper_case_globals)]
    fn parse(dwarf: &gimli::Dwarf<Reader<'_>>, unit: &gimli::Unit<Reader<'_>>) -> Option<Self> {
        use gimli::constants::*;
        let mut cursor = unit.entries();
        let root = cursor.next_dfs().ok()??;
        let cpp = matches!(
            root.attr_value(DW_AT_language),
            Some(gimli::AttributeValue::Language(
                DW_LANG_C_plus_plus
                    | DW_LANG_C_plus_plus_03
                    | DW_LANG_C_plus_plus_11
                    | DW_LANG_C_plus_plus_14
                    | DW_LANG_C_plus_plus_17
                    | DW_LANG_C_plus_plus_20
            ))
        );
        if !cpp {
            return None;
        }
        let mut scopes = UnitScopes {
            nodes: Vec::new(),
            inlined: Vec::new(),
            longest: 0,
        };
        // Open entries with children: (depth, the node they are or sit in).
        let mut open: Vec<(isize, Option<usize>)> = Vec::new();
        while let Some(entry) = cursor.next_dfs().ok()? {
            let depth = entry.depth();
            while open.last().is_some_and(|&(d, _)| d >= depth) {
                open.pop();
            }
            let parent = open.last().and_then(|&(_, node)| node);
            let kind = match entry.tag() {
                DW_TAG_namespace => Some(Kind::Namespace),
                DW_TAG_class_type | DW_TAG_structure_type | DW_TAG_union_type => {
                    Some(Kind::Type { lambda: None })
                }
                DW_TAG_subprogram => Some(Kind::Function),
                DW_TAG_inlined_subroutine => {
                    scopes.add_inlined(dwarf, unit, entry);
                    None
                }
                DW_TAG_formal_parameter => {
                    if entry.attr_value(DW_AT_artificial).is_none() {
                        scopes.mark_lambda_parameter(parent);
                    }
                    None
                }
                _ => None,
            };
            let this = match kind {
                Some(kind) => {
                    let name = entry
                        .attr_value(DW_AT_name)
                        .and_then(|v| dwarf.attr_string(unit, v).ok())
                        .map(|s| Box::from(&*s.to_string_lossy()));
                    let link = [DW_AT_specification, DW_AT_abstract_origin]
                        .into_iter()
                        .find_map(|at| entry.attr_value(at))
                        .map_or(Link::None, |v| match v {
                            gimli::AttributeValue::UnitRef(o) => Link::Local(o.0),
                            _ => Link::Foreign,
                        });
                    scopes.nodes.push(Node {
                        offset: entry.offset().0,
                        parent,
                        kind,
                        name,
                        link,
                    });
                    let index = scopes.nodes.len() - 1;
                    scopes.mark_lambda(index);
                    Some(index)
                }
                None => parent,
            };
            if entry.has_children() {
                open.push((depth, this));
            }
            if scopes.entries() > MAX_CACHED_ENTRIES {
                return None;
            }
        }
        scopes.name_nameless_types();
        scopes.inlined.sort_unstable_by_key(|r| (r.begin, r.depth));
        Some(scopes)
    }

    fn add_inlined<'a>(
        &mut self,
        dwarf: &gimli::Dwarf<Reader<'a>>,
        unit: &gimli::Unit<Reader<'a>>,
        entry: &gimli::DebuggingInformationEntry<Reader<'a>>,
    ) {
        let Some(gimli::AttributeValue::UnitRef(origin)) =
            entry.attr_value(gimli::DW_AT_abstract_origin)
        else {
            return;
        };
        let Ok(mut ranges) = dwarf.die_ranges(unit, entry) else {
            return;
        };
        while let Ok(Some(range)) = ranges.next() {
            if range.begin < range.end {
                self.longest = self.longest.max(range.end - range.begin);
                self.inlined.push(InlinedRange {
                    begin: range.begin,
                    end: range.end,
                    depth: entry.depth(),
                    origin: origin.0,
                });
            }
            if self.entries() > MAX_CACHED_ENTRIES {
                return;
            }
        }
    }

    /// A call operator declared in a nameless class makes it a lambda's class.
    fn mark_lambda(&mut self, index: usize) {
        let node = &self.nodes[index];
        if node.kind == Kind::Function
            && node.name.as_deref() == Some("operator()")
            && let Some(class) = node.parent
            && let Some(Node {
                kind: Kind::Type { lambda },
                name: None,
                ..
            }) = self.nodes.get_mut(class)
        {
            lambda.get_or_insert(false);
        }
    }

    /// A parameter (not `this`) of a lambda's call operator.
    fn mark_lambda_parameter(&mut self, function: Option<usize>) {
        let Some(class) = function
            .and_then(|f| self.nodes.get(f))
            .filter(|f| f.kind == Kind::Function && f.name.as_deref() == Some("operator()"))
            .and_then(|f| f.parent)
        else {
            return;
        };
        if let Some(Node {
            kind: Kind::Type {
                lambda: Some(takes),
            },
            ..
        }) = self.nodes.get_mut(class)
        {
            *takes = true;
        }
    }

    /// Names nameless classes as the demangler does: `{lambda()#N}`, `{unnamed type#N}`,
    /// numbered in declaration order within their enclosing entry.
    fn name_nameless_types(&mut self) {
        let mut counts: HashMap<(Option<usize>, u8), u32> = HashMap::new();
        for node in &mut self.nodes {
            let Kind::Type { lambda } = node.kind else {
                continue;
            };
            if node.name.is_some() {
                continue;
            }
            let class = match lambda {
                Some(false) => 0,
                Some(true) => 1,
                None => 2,
            };
            let n = counts.entry((node.parent, class)).or_insert(0);
            *n += 1;
            node.name = Some(
                match class {
                    0 => format!("{{lambda()#{n}}}"),
                    1 => format!("{{lambda(...)#{n}}}"),
                    _ => format!("{{unnamed type#{n}}}"),
                }
                .into(),
            );
        }
    }

    fn node(&self, offset: usize) -> Option<usize> {
        self.nodes.binary_search_by_key(&offset, |n| n.offset).ok()
    }

    /// The inlined calls whose ranges hold `svma`, outermost first, named.
    fn names_at(&self, svma: u64) -> Vec<InlinedName> {
        let after = self.inlined.partition_point(|r| r.begin <= svma);
        let mut calls: Vec<&InlinedRange> = self.inlined[..after]
            .iter()
            .rev()
            .take_while(|r| svma - r.begin < self.longest.max(1))
            .filter(|r| svma < r.end)
            .collect();
        calls.sort_by_key(|r| r.depth);
        calls.dedup_by_key(|r| r.depth);
        calls
            .into_iter()
            .take(MAX_INLINED_CALLS)
            .filter_map(|r| self.name_of(r.origin))
            .collect()
    }

    /// The bare and the scoped name of the function at `offset`: its name, found through its
    /// links, and the scopes around its declaration (the last entry its links lead to).
    fn name_of(&self, offset: usize) -> Option<InlinedName> {
        let mut steps = 0usize;
        let (decl, name) = self.declaration(self.node(offset)?, &mut steps)?;
        let bare = name.to_string();
        let mut scopes: Vec<&str> = Vec::new();
        let mut next = self.nodes[decl].parent;
        let scoped = loop {
            let Some(index) = next else {
                break true;
            };
            steps += 1;
            if steps > MAX_SCOPE_STEPS {
                break false;
            }
            let node = &self.nodes[index];
            match node.kind {
                Kind::Namespace => {
                    scopes.push(node.name.as_deref().unwrap_or("(anonymous namespace)"));
                    next = node.parent;
                }
                Kind::Type { .. } => {
                    let Some(name) = node.name.as_deref() else {
                        break false;
                    };
                    scopes.push(name);
                    next = node.parent;
                }
                // A class inside a function (a lambda's): the function, by its declaration.
                Kind::Function => {
                    let Some((decl, name)) = self.declaration(index, &mut steps) else {
                        break false;
                    };
                    scopes.push(name);
                    next = self.nodes[decl].parent;
                }
            }
        };
        let scoped = (scoped && !scopes.is_empty()).then(|| {
            let mut full = String::new();
            for scope in scopes.iter().rev() {
                full.push_str(scope);
                full.push_str("::");
            }
            full.push_str(&bare);
            full
        });
        Some(InlinedName { bare, scoped })
    }

    /// Follows `index`'s links to the declaration: (its node, the first name on the way).
    /// `None` for a link into another unit or a missing entry, a chain without a name, or
    /// more than [`MAX_SCOPE_STEPS`] steps (a cycle).
    fn declaration(&self, mut index: usize, steps: &mut usize) -> Option<(usize, &str)> {
        let mut name = self.nodes[index].name.as_deref();
        loop {
            match self.nodes[index].link {
                Link::None => return Some((index, name?)),
                Link::Foreign => return None,
                Link::Local(offset) => {
                    *steps += 1;
                    if *steps > MAX_SCOPE_STEPS {
                        return None;
                    }
                    index = self.node(offset)?;
                    name = name.or(self.nodes[index].name.as_deref());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(offset: usize, parent: Option<usize>, kind: Kind, name: Option<&str>) -> Node {
        Node {
            offset,
            parent,
            kind,
            name: name.map(Box::from),
            link: Link::None,
        }
    }

    fn unit(nodes: Vec<Node>, inlined: Vec<InlinedRange>) -> UnitScopes {
        let longest = inlined.iter().map(|r| r.end - r.begin).max().unwrap_or(0);
        let mut scopes = UnitScopes {
            nodes,
            inlined,
            longest,
        };
        scopes.name_nameless_types();
        scopes
    }

    const CLASS: Kind = Kind::Type { lambda: None };
    const LAMBDA: Kind = Kind::Type {
        lambda: Some(false),
    };

    #[test]
    fn a_lambda_is_named_by_its_function_and_namespace() {
        // namespace alpha { void turn(); }            (declaration, 0x10..0x20)
        // void alpha::turn() { [..]() { .. }; }        (definition at unit level, links to it)
        let mut definition = node(0x30, None, Kind::Function, None);
        definition.link = Link::Local(0x20);
        let mut nodes = vec![
            node(0x10, None, Kind::Namespace, Some("alpha")),
            node(0x20, Some(0), Kind::Function, Some("turn")),
            definition,
            node(0x40, Some(2), LAMBDA, None),
            node(0x50, Some(3), Kind::Function, Some("operator()")),
            node(0x60, Some(2), LAMBDA, None),
            node(0x70, Some(5), Kind::Function, Some("operator()")),
            node(0x80, None, Kind::Namespace, None),
            node(0x90, Some(7), CLASS, Some("Gear")),
            node(0xa0, Some(8), Kind::Function, Some("_M_invoke<0>")),
        ];
        // An abstract instance that points at the second lambda's operator.
        let mut abstract_instance = node(0xb0, None, Kind::Function, None);
        abstract_instance.link = Link::Local(0x70);
        nodes.push(abstract_instance);
        let scopes = unit(
            nodes,
            vec![
                InlinedRange {
                    begin: 0x1000,
                    end: 0x1100,
                    depth: 2,
                    origin: 0x50,
                },
                InlinedRange {
                    begin: 0x1010,
                    end: 0x1020,
                    depth: 3,
                    origin: 0xb0,
                },
            ],
        );
        let scoped = |o| scopes.name_of(o).and_then(|n| n.scoped);
        assert_eq!(
            scoped(0x50).as_deref(),
            Some("alpha::turn::{lambda()#1}::operator()")
        );
        assert_eq!(
            scoped(0xb0).as_deref(),
            Some("alpha::turn::{lambda()#2}::operator()")
        );
        assert_eq!(
            scoped(0xa0).as_deref(),
            Some("(anonymous namespace)::Gear::_M_invoke<0>")
        );
        // Outermost first, only the calls that hold the address.
        let at = |svma| {
            scopes
                .names_at(svma)
                .into_iter()
                .map(|n| n.scoped.unwrap_or(n.bare))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            at(0x1018),
            [
                "alpha::turn::{lambda()#1}::operator()",
                "alpha::turn::{lambda()#2}::operator()"
            ]
        );
        assert_eq!(at(0x1080), ["alpha::turn::{lambda()#1}::operator()"]);
        assert!(at(0x2000).is_empty());
    }

    #[test]
    fn cyclic_deep_or_foreign_links_cost_only_the_scope() {
        // Two functions whose links point at each other: no name, no hang.
        let mut a = node(0x10, None, Kind::Function, None);
        a.link = Link::Local(0x20);
        let mut b = node(0x20, None, Kind::Function, None);
        b.link = Link::Local(0x10);
        // A named function whose parent chain is a cycle of classes.
        let mut nodes = vec![
            a,
            b,
            node(0x30, Some(3), CLASS, Some("A")),
            node(0x40, Some(2), CLASS, Some("B")),
            node(0x50, Some(3), Kind::Function, Some("poll")),
        ];
        let mut foreign = node(0x60, Some(2), Kind::Function, Some("step"));
        foreign.link = Link::Foreign;
        nodes.push(foreign);
        // A chain of links longer than the bound.
        let base = 0x1000;
        for i in 0..=MAX_SCOPE_STEPS {
            let mut n = node(base + i, None, Kind::Function, Some("deep"));
            n.link = Link::Local(base + i + 1);
            nodes.push(n);
        }
        nodes.push(node(base + MAX_SCOPE_STEPS + 1, None, Kind::Function, None));
        let scopes = unit(nodes, Vec::new());
        assert_eq!(scopes.name_of(0x10), None);
        assert_eq!(
            scopes.name_of(0x50),
            Some(InlinedName {
                bare: "poll".into(),
                scoped: None
            })
        );
        assert_eq!(scopes.name_of(0x60), None);
        assert_eq!(scopes.name_of(base), None);
        assert_eq!(scopes.name_of(0x999), None);
    }

    #[test]
    fn only_sealed_copies_are_read() {
        let file = File::open(flamegrid_workloads::Gears::Cpp.path()).expect("gears-cpp is built");
        let key = FileKey::of(&file.metadata().expect("metadata"));
        let mut cache = ScopeCache::default();
        assert!(cache.inlined_at(&key, &file, 0x1000).is_empty());
        assert!(matches!(cache.files.get(&key), Some(None)));
    }

    /// A real C++ binary's DWARF with bytes overwritten: every lookup answers (scoped, bare or
    /// nothing), none panics or hangs.
    #[test]
    fn damaged_dwarf_never_panics() {
        use object::{Object, ObjectSection};
        let path = flamegrid_workloads::Gears::Cpp.path();
        let original = std::fs::read(path).expect("gears-cpp is built");
        let elf = object::File::parse(&*original).expect("an ELF file");
        let (info, info_len) = elf
            .section_by_name(".debug_info")
            .and_then(|s| s.file_range())
            .expect(".debug_info");
        let text = elf.section_by_name(".text").expect(".text").address();
        let text_len = elf.section_by_name(".text").expect(".text").size();
        // A small deterministic generator (xorshift): the same damage on every run.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..24 {
            let mut damaged = original.clone();
            // Round 0 reads the file as built: its lambdas have their scopes.
            for _ in 0..(round * 4) {
                let at = info + next() % info_len;
                damaged[at as usize] = next() as u8;
            }
            // Read the way the symbolizer reads modules: from a sealed copy.
            let scratch = std::env::temp_dir().join(format!(
                "flamegrid-dwarf-scope-{}-{round}",
                std::process::id()
            ));
            std::fs::write(&scratch, &damaged).expect("write");
            let file = super::super::target_file::sealed_copy(&File::open(&scratch).expect("open"))
                .expect("sealed copy");
            let _ = std::fs::remove_file(&scratch);
            let key = FileKey::of(&file.metadata().expect("metadata"));
            let mut cache = ScopeCache::default();
            let mut scoped = std::collections::BTreeSet::new();
            for svma in (text..text + text_len).step_by(3) {
                let names = cache.inlined_at(&key, &file, svma);
                assert!(names.len() < 1000, "round {round}: {} calls", names.len());
                scoped.extend(names.into_iter().filter_map(|n| n.scoped));
            }
            if round == 0 {
                for name in [
                    "alpha::turn::{lambda()#1}::operator()",
                    "beta::turn::{lambda()#1}::operator()",
                    "main::{lambda()#2}::operator()",
                ] {
                    assert!(scoped.contains(name), "{name} not in {scoped:#?}");
                }
            }
        }
    }
}
