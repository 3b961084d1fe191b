//! How a run is stored in the shared database (`flamegraph_runs.body`, see [`super::shared`]):
//! its folded profiles and missing subtasks as JSON, deflated. The cache keeps the runs it
//! pushes into history in the same form ([`super::packed`]).
//!
//! A run of a vertex of ten thousand subtasks shares most of its frame names, and most of its
//! stacks, across its subtasks; in memory it keeps the names once (one [`NameTable`] per run,
//! see [`super::profile`]). The stored body keeps both once:
//!
//! * `names`: the names of every table the run's profiles use, once;
//! * `stacks`: every distinct stack of the run, as ids into `names`, once;
//! * per subtask: its names (ids into `names`, in the profile's own order), and per row of its
//!   profile only the stack's id, the state, whether it was cut, the count and its split over
//!   the subtask's threads.
//!
//! **Format 3** (what [`encode`] writes) writes every list of ids (a stack's frames, a
//! subtask's names) as differences from the id before it: ids of neighbouring frames are close
//! (names are interned as the stacks come in, so a stack's names were interned together), and
//! a column of small, repeated differences deflates several times better than the ids
//! themselves; it is deflated at level [`DEFLATE_LEVEL`] rather than the fastest. Measured on a
//! run of the fleet simulator (10,000 subtasks, 30-frame stacks, 10,000 distinct): format 2
//! 5.77 MB, format 3 at the fastest level 2.56 MB, at level 4 1.50 MB, encoding in about 100 ms
//! instead of 56, decoding in 65. The cache keeps up to ten such bodies per vertex
//! ([`super::packed`]), the database one per run. **Format 2** (the same lists as plain ids)
//! and **format 1** (every profile with its names in full) are still read: a database keeps
//! runs across upgrades. A replica of an older release cannot read format 3 and skips such a
//! run (it logs why) until it is upgraded too.
//!
//! Encoding and decoding are still CPU work of tens to hundreds of milliseconds at that size:
//! callers on the async runtime run them on a blocking thread
//! ([`super::shared::SharedRuns::store`]).
//!
//! Everything read back is input from another process (another replica, or whoever can write
//! the database): a body is inflated to at most [`MAX_STORED_BYTES`], and a name id that points
//! outside the run's names (or a difference that leads out of the ids' range) is refused as
//! corrupt, never a panic.

use super::profile::{NameTable, ProfileNames, Snapshot, StackCount, SubtaskProfile};
use crate::missing::Missing;
use flamegrid_model::{GraphType, SampledThread, ThreadState};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::sync::Arc;

/// The largest stored snapshot (JSON, once inflated) a replica reads: a bound on what a
/// corrupt or hostile row can make it allocate.
pub const MAX_STORED_BYTES: u64 = 512 * 1024 * 1024;

/// The format [`encode`] writes.
const FORMAT: u32 = 3;

/// What a format-2 body starts with, before its deflated JSON: what tells it from format 1,
/// a bare deflate stream, which cannot start with this byte (`F` would declare a deflate block
/// of the reserved type 3).
const FORMAT_2_MAGIC: &[u8] = b"FGR2";

/// What a format-3 body starts with (see [`FORMAT_2_MAGIC`]).
const FORMAT_3_MAGIC: &[u8] = b"FGR3";

/// How hard [`encode`] deflates: 4 of 9. Format 3's columns of differences deflate to 60 % of
/// what the fastest level makes of them for less than twice its time (see the module docs),
/// and every byte saved is kept up to ten times over in the cache's history; levels above 4
/// cost up to twice as much again for a few per cent.
const DEFLATE_LEVEL: u32 = 4;

/// A run as written (format 3).
#[derive(serde::Serialize)]
struct BodyRef<'a> {
    format: u32,
    start_ms: i64,
    end_ms: i64,
    /// The names of every table the profiles use, one table after the other.
    names: Vec<&'a str>,
    /// The run's distinct stacks, as ids into `names`, outermost frame first, each id written
    /// as its difference from the one before it.
    stacks: Vec<Differences<'a>>,
    subtasks: Vec<ProfileRef<'a>>,
    missing: &'a Missing,
}

/// A profile as written: its names as ids into [`BodyRef::names`] (as differences), its rows
/// by stack id.
#[derive(serde::Serialize)]
struct ProfileRef<'a> {
    index: u32,
    names: ShiftedIds<'a>,
    rows: Vec<Row<'a>>,
    threads: &'a [SampledThread],
    thread_counts: [usize; 3],
}

/// A row of a profile as written and read: (stack id, state code, truncated, count, thread
/// split as flat `thread, count` pairs).
type RowOf<T> = (u32, u8, bool, u64, T);

/// A row as written.
type Row<'a> = RowOf<FlatSplit<'a>>;

/// A row's split over threads, written as one flat list.
struct FlatSplit<'a>(&'a [(u32, u64)]);

impl serde::Serialize for FlatSplit<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().flat_map(|&(t, n)| [u64::from(t), n]))
    }
}

/// A profile's table ids, shifted by where its table starts in the body's names, written as
/// differences: serialized without a copy.
struct ShiftedIds<'a> {
    ids: &'a [u32],
    offset: u32,
}

impl serde::Serialize for ShiftedIds<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(differences(
            self.ids.iter().map(|&id| id.saturating_add(self.offset)),
        ))
    }
}

/// A list of ids written as differences (see the module docs).
struct Differences<'a>(&'a [u32]);

impl serde::Serialize for Differences<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(differences(self.0.iter().copied()))
    }
}

/// Each id minus the one before it (the first minus 0).
fn differences(ids: impl Iterator<Item = u32>) -> impl Iterator<Item = i64> {
    ids.scan(0i64, |before, id| {
        let d = i64::from(id) - *before;
        *before = i64::from(id);
        Some(d)
    })
}

/// The ids a list read back stands for: as they are (format 2) or summed up from their
/// differences (format 3); `None` when one is not an id (negative or beyond `u32`).
fn ids_read(list: Vec<i64>, as_differences: bool) -> Option<Vec<u32>> {
    let mut at = 0i64;
    list.into_iter()
        .map(|v| {
            at = if as_differences {
                at.checked_add(v)?
            } else {
                v
            };
            u32::try_from(at).ok()
        })
        .collect()
}

/// A state's code in a stored row: its place in [`ThreadState::ALL`].
fn state_code(state: ThreadState) -> u8 {
    ThreadState::ALL
        .iter()
        .position(|&s| s == state)
        .unwrap_or_default() as u8
}

/// A run as read (format 2 or 3: the id lists are ids or differences).
#[derive(serde::Deserialize)]
struct Body {
    start_ms: i64,
    end_ms: i64,
    names: Vec<String>,
    stacks: Vec<Vec<i64>>,
    subtasks: Vec<StoredProfile>,
    missing: Missing,
}

/// A profile as read (format 2 or 3).
#[derive(serde::Deserialize)]
struct StoredProfile {
    index: u32,
    names: Vec<i64>,
    rows: Vec<RowOf<Vec<u64>>>,
    threads: Vec<SampledThread>,
    thread_counts: [usize; 3],
}

/// A run as read (format 1: every profile with its names in full).
#[derive(serde::Deserialize)]
struct BodyV1 {
    start_ms: i64,
    end_ms: i64,
    subtasks: Vec<(u32, SubtaskProfile)>,
    missing: Missing,
}

/// `snapshot` as stored: format 3, deflated. CPU work proportional to the run: call it off the
/// async runtime for a big one.
pub fn encode(snapshot: &Snapshot) -> Result<Vec<u8>, String> {
    // Every distinct table once (a run's profiles share one; a profile folded on its own has
    // its own), in the order first met.
    let mut tables: Vec<(&Arc<NameTable>, u32)> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    // The run's distinct stacks with their ids (dense, from 0), listed in id order at the end.
    let mut stack_ids: HashMap<Box<[u32]>, u32> = HashMap::new();
    let mut scratch: Vec<u32> = Vec::new();
    let mut subtasks = Vec::with_capacity(snapshot.subtasks.len());
    for (&index, profile) in &snapshot.subtasks {
        let table = profile.names.table();
        let offset = match tables.iter().rev().find(|(t, _)| Arc::ptr_eq(t, table)) {
            Some(&(_, offset)) => offset,
            None => {
                let offset = u32::try_from(names.len())
                    .map_err(|_| "a run with more than 2^32 frame names".to_string())?;
                names.extend(
                    (0..table.len() as u32).filter_map(|id| table.get(id).map(|n| n.as_str())),
                );
                tables.push((table, offset));
                offset
            }
        };
        let ids = profile.names.ids();
        let mut rows = Vec::with_capacity(profile.stacks.len());
        for row in &profile.stacks {
            scratch.clear();
            for &f in row.frames.iter() {
                let id = ids
                    .get(f as usize)
                    .ok_or_else(|| format!("subtask {index}: a stack names frame {f}"))?;
                scratch.push(id.saturating_add(offset));
            }
            let stack = match stack_ids.get(scratch.as_slice()) {
                Some(&id) => id,
                None => {
                    let id = stack_ids.len() as u32;
                    stack_ids.insert(scratch.as_slice().into(), id);
                    id
                }
            };
            rows.push((
                stack,
                state_code(row.state),
                row.truncated,
                row.count,
                FlatSplit(&row.threads),
            ));
        }
        subtasks.push(ProfileRef {
            index,
            names: ShiftedIds { ids, offset },
            rows,
            threads: &profile.threads,
            thread_counts: GraphType::ALL.map(|ty| profile.thread_count(ty)),
        });
    }
    let mut stacks: Vec<Box<[u32]>> = vec![Box::default(); stack_ids.len()];
    for (frames, id) in stack_ids {
        if let Some(slot) = stacks.get_mut(id as usize) {
            *slot = frames;
        }
    }
    let body = BodyRef {
        format: FORMAT,
        start_ms: snapshot.start_ms,
        end_ms: snapshot.end_ms,
        names,
        stacks: stacks.iter().map(|s| Differences(s)).collect(),
        subtasks,
        missing: &snapshot.missing,
    };
    let mut out = flate2::write::DeflateEncoder::new(
        FORMAT_3_MAGIC.to_vec(),
        flate2::Compression::new(DEFLATE_LEVEL),
    );
    // The JSON writer writes a few bytes at a time: the compressor gets them in big pieces,
    // not one call per number (which was half of the time of encoding).
    let mut buffered = std::io::BufWriter::with_capacity(1 << 16, &mut out);
    serde_json::to_writer(&mut buffered, &body).map_err(|e| e.to_string())?;
    buffered.flush().map_err(|e| e.to_string())?;
    drop(buffered);
    out.finish().map_err(|e| e.to_string())
}

/// The run `run_id` from its stored `body` (format 3, 2 or 1); a clear error (never a panic,
/// never more than [`MAX_STORED_BYTES`] inflated) for a corrupt one. CPU work proportional to
/// the run: call it off the async runtime for a big one.
pub fn decode(run_id: u64, body: &[u8]) -> Result<Snapshot, String> {
    let (format, deflated) = if let Some(rest) = body.strip_prefix(FORMAT_3_MAGIC) {
        (3, rest)
    } else if let Some(rest) = body.strip_prefix(FORMAT_2_MAGIC) {
        (2, rest)
    } else {
        (1, body)
    };
    let mut json = Vec::new();
    flate2::read::DeflateDecoder::new(deflated)
        .take(MAX_STORED_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(|e| format!("stored run {run_id}: cannot inflate: {e}"))?;
    if json.len() as u64 > MAX_STORED_BYTES {
        return Err(format!(
            "stored run {run_id}: larger than {MAX_STORED_BYTES} bytes once inflated"
        ));
    }
    if format == 1 {
        return decode_v1(run_id, &json);
    }
    let as_differences = format == 3;
    let body: Body =
        serde_json::from_slice(&json).map_err(|e| format!("stored run {run_id}: {e}"))?;
    drop(json);
    let Body {
        start_ms,
        end_ms,
        names,
        stacks,
        subtasks: stored,
        missing,
    } = body;
    let table = Arc::new(NameTable::new(names));
    let stacks = stacks
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            ids_read(s, as_differences)
                .ok_or_else(|| format!("stored run {run_id}: stack {i} has a frame that is no id"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut subtasks = BTreeMap::new();
    // A profile's own index of each run-wide name id it has (`u32::MAX`: none), by name id:
    // set and reset per subtask for its own names only.
    let mut local: Vec<u32> = vec![u32::MAX; table.len()];
    for p in stored {
        let corrupt = |what: String| format!("stored run {run_id}: subtask {}: {what}", p.index);
        let ids = ids_read(p.names, as_differences)
            .ok_or_else(|| corrupt("a name that is no id".into()))?;
        let names = ProfileNames::in_table(Arc::clone(&table), ids.into_boxed_slice())
            .map_err(|id| corrupt(format!("names frame {id} of {}", table.len())))?;
        for (i, &id) in names.ids().iter().enumerate() {
            if let Some(slot) = local.get_mut(id as usize) {
                *slot = i as u32;
            }
        }
        let mut rows = Vec::with_capacity(p.rows.len());
        for (stack, state, truncated, count, split) in p.rows {
            let global = stacks
                .get(stack as usize)
                .ok_or_else(|| corrupt(format!("a row names stack {stack} of {}", stacks.len())))?;
            let mut frames = Vec::with_capacity(global.len());
            for &id in global {
                match local.get(id as usize) {
                    Some(&f) if f != u32::MAX => frames.push(f),
                    _ => {
                        return Err(corrupt(format!(
                            "stack {stack} has a frame the subtask does not name"
                        )));
                    }
                }
            }
            let frames = frames.into_boxed_slice();
            let state = *ThreadState::ALL
                .get(state as usize)
                .ok_or_else(|| corrupt(format!("unknown state {state}")))?;
            if split.len() % 2 != 0 {
                return Err(corrupt("a row's thread split is cut short".into()));
            }
            let threads = split
                .chunks_exact(2)
                .map(|pair| Some((u32::try_from(pair[0]).ok()?, pair[1])))
                .collect::<Option<Box<[(u32, u64)]>>>()
                .ok_or_else(|| corrupt("a row names a thread beyond 2^32".into()))?;
            rows.push(StackCount {
                state,
                truncated,
                frames,
                count,
                threads,
            });
        }
        for &id in names.ids() {
            if let Some(slot) = local.get_mut(id as usize) {
                *slot = u32::MAX;
            }
        }
        let profile =
            SubtaskProfile::from_parts(names, rows, p.threads, p.thread_counts).map_err(corrupt)?;
        subtasks.insert(p.index, Arc::new(profile));
    }
    Ok(Snapshot {
        run_id,
        start_ms,
        end_ms,
        subtasks,
        missing,
    })
}

/// A format-1 body, already inflated.
fn decode_v1(run_id: u64, json: &[u8]) -> Result<Snapshot, String> {
    let body: BodyV1 =
        serde_json::from_slice(json).map_err(|e| format!("stored run {run_id}: {e}"))?;
    Ok(Snapshot {
        run_id,
        start_ms: body.start_ms,
        end_ms: body.end_ms,
        subtasks: body
            .subtasks
            .into_iter()
            .map(|(i, p)| (i, Arc::new(p)))
            .collect(),
        missing: body.missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flamegraph::profile::tests::{snapshot, spin_and_sleep};

    #[test]
    fn a_stored_run_reads_back_equal_and_a_corrupt_one_is_refused() {
        let s = snapshot(7, &[(0, spin_and_sleep(5)), (3, spin_and_sleep(2))], &[1]);
        let body = encode(&s).unwrap();
        let back = decode(7, &body).unwrap();
        assert_eq!(back, s);
        // Read back, the profiles share one table again.
        let tables: Vec<_> = back.subtasks.values().map(|p| p.names.table()).collect();
        assert!(Arc::ptr_eq(tables[0], tables[1]));
        assert!(decode(7, b"not deflate at all").is_err());
        let mut cut = body.clone();
        cut.truncate(body.len() / 2);
        assert!(decode(7, &cut).is_err());
    }

    /// Deflates `json` as a stored body, after `magic`.
    fn deflated_after(magic: &[u8], json: &str) -> Vec<u8> {
        use std::io::Write;
        let mut out =
            flate2::write::DeflateEncoder::new(magic.to_vec(), flate2::Compression::fast());
        out.write_all(json.as_bytes()).unwrap();
        out.finish().unwrap()
    }

    /// Deflates `json` as a format-1 body.
    fn deflated(json: &str) -> Vec<u8> {
        deflated_after(b"", json)
    }

    #[test]
    fn a_run_stored_in_format_1_still_reads() {
        let s = snapshot(9, &[(2, spin_and_sleep(3)), (5, spin_and_sleep(1))], &[4]);
        #[derive(serde::Serialize)]
        struct V1<'a> {
            start_ms: i64,
            end_ms: i64,
            subtasks: Vec<(u32, &'a SubtaskProfile)>,
            missing: &'a Missing,
        }
        let v1 = serde_json::to_string(&V1 {
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            subtasks: s.subtasks.iter().map(|(i, p)| (*i, p.as_ref())).collect(),
            missing: &s.missing,
        })
        .unwrap();
        assert_eq!(decode(9, &deflated(&v1)).unwrap(), s);
    }

    #[test]
    fn a_name_id_outside_the_run_is_refused_as_corrupt() {
        let s = snapshot(3, &[(0, spin_and_sleep(2))], &[]);
        let mut inflated = Vec::new();
        let body = encode(&s).unwrap();
        flate2::read::DeflateDecoder::new(body.strip_prefix(FORMAT_3_MAGIC).unwrap())
            .read_to_end(&mut inflated)
            .unwrap();
        let deflated = |json: &str| deflated_after(FORMAT_3_MAGIC, json);
        let mut body: serde_json::Value = serde_json::from_slice(&inflated).unwrap();
        body["subtasks"][0]["names"][0] = serde_json::json!(1_000_000);
        let err = decode(3, &deflated(&body.to_string())).unwrap_err();
        assert!(err.contains("names frame 1000000"), "{err}");
        // A row naming a stack the run does not have, or a state there is none of, is refused.
        for (row_field, value, says) in [(0, 9_999, "stack 9999"), (1, 42, "unknown state 42")] {
            let mut body: serde_json::Value = serde_json::from_slice(&inflated).unwrap();
            body["subtasks"][0]["rows"][0][row_field] = serde_json::json!(value);
            let err = decode(3, &deflated(&body.to_string())).unwrap_err();
            assert!(err.contains("subtask 0") && err.contains(says), "{err}");
        }
    }

    /// `body`'s JSON, inflated (any format with a magic).
    fn inflated(body: &[u8]) -> serde_json::Value {
        let mut json = Vec::new();
        flate2::read::DeflateDecoder::new(&body[4..])
            .read_to_end(&mut json)
            .unwrap();
        serde_json::from_slice(&json).unwrap()
    }

    #[test]
    fn id_lists_are_written_as_differences_and_a_run_in_format_2_still_reads() {
        let s = snapshot(4, &[(0, spin_and_sleep(4)), (6, spin_and_sleep(2))], &[2]);
        let body = encode(&s).unwrap();
        assert!(body.starts_with(FORMAT_3_MAGIC));
        let v3 = inflated(&body);
        assert_eq!(v3["format"], 3);
        // Format 2 is the same body with every list summed up into plain ids.
        let sum = |list: &serde_json::Value| {
            let mut at = 0;
            let ids: Vec<i64> = list
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    at += d.as_i64().unwrap();
                    at
                })
                .collect();
            serde_json::json!(ids)
        };
        let mut v2 = v3.clone();
        v2["format"] = serde_json::json!(2);
        let mut some_list_differs = false;
        for stack in v2["stacks"].as_array_mut().unwrap() {
            let ids = sum(stack);
            some_list_differs |= ids != *stack;
            *stack = ids;
        }
        for p in v2["subtasks"].as_array_mut().unwrap() {
            let ids = sum(&p["names"]);
            some_list_differs |= ids != p["names"];
            p["names"] = ids;
        }
        assert!(
            some_list_differs,
            "no list was written as differences: {v3}"
        );
        let format_2 = deflated_after(FORMAT_2_MAGIC, &v2.to_string());
        assert_eq!(decode(4, &format_2).unwrap(), s);
        // Format 2's plain ids read as differences would be other ids: the magic decides.
        assert_eq!(decode(4, &body).unwrap(), s);
    }

    #[test]
    fn differences_that_lead_out_of_the_ids_are_refused_as_corrupt() {
        let s = snapshot(5, &[(1, spin_and_sleep(3))], &[]);
        let v3 = inflated(&encode(&s).unwrap());
        for (at, says) in [
            ("/stacks/0/0", "stack 0 has a frame that is no id"),
            ("/subtasks/0/names/0", "subtask 1: a name that is no id"),
        ] {
            for bad in [
                serde_json::json!(-1),
                serde_json::json!(u64::from(u32::MAX) + 1),
            ] {
                let mut body = v3.clone();
                *body.pointer_mut(at).unwrap() = bad.clone();
                let err =
                    decode(5, &deflated_after(FORMAT_3_MAGIC, &body.to_string())).unwrap_err();
                assert!(err.contains(says), "{at} = {bad}: {err}");
            }
        }
    }
}
