//! How a run is stored in the shared database (`flamegraph_runs.body`, see [`super::shared`]):
//! its folded profiles and missing subtasks as JSON, deflated.
//!
//! A run of a vertex of ten thousand subtasks shares most of its frame names across its
//! subtasks, and keeps them once in memory (one [`NameTable`] per run, see [`super::profile`]).
//! The stored body does the same (**format 2**): the names of every table the run's profiles
//! use, once, at the top, and per subtask only the ids of its names into that list. Reading it
//! back gives one shared table again, so a replica that lands another's run holds it in as
//! little memory as the replica that sampled it. Format 1 (every subtask with its names in
//! full, written before format 2) is still read: a database keeps runs across upgrades.
//!
//! Encoding and decoding are CPU work of tens of milliseconds at that size: callers on the
//! async runtime run them on a blocking thread ([`super::shared::SharedRuns::store`]).
//!
//! Everything read back is input from another process (another replica, or whoever can write
//! the database): a body is inflated to at most [`MAX_STORED_BYTES`], and a name id that points
//! outside the run's names is refused as corrupt, never a panic.

use super::profile::{NameTable, ProfileNames, Snapshot, StackCount, SubtaskProfile};
use crate::missing::Missing;
use flamegrid_model::{GraphType, SampledThread};
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

/// The largest stored snapshot (JSON, once inflated) a replica reads: a bound on what a
/// corrupt or hostile row can make it allocate.
pub const MAX_STORED_BYTES: u64 = 512 * 1024 * 1024;

/// The format [`encode`] writes.
const FORMAT: u32 = 2;

/// What a format-2 body starts with, before its deflated JSON: what tells it from format 1,
/// a bare deflate stream, which cannot start with this byte (`F` would declare a deflate block
/// of the reserved type 3).
const FORMAT_2_MAGIC: &[u8] = b"FGR2";

/// A run as written (format 2).
#[derive(serde::Serialize)]
struct BodyRef<'a> {
    format: u32,
    start_ms: i64,
    end_ms: i64,
    /// The names of every table the profiles use, one table after the other.
    names: Vec<&'a str>,
    subtasks: Vec<ProfileRef<'a>>,
    missing: &'a Missing,
}

/// A profile as written: its names as ids into [`BodyRef::names`].
#[derive(serde::Serialize)]
struct ProfileRef<'a> {
    index: u32,
    names: ShiftedIds<'a>,
    stacks: &'a [StackCount],
    threads: &'a [SampledThread],
    thread_counts: [usize; 3],
}

/// A profile's table ids, shifted by where its table starts in the body's names: serialized
/// without a copy.
struct ShiftedIds<'a> {
    ids: &'a [u32],
    offset: u32,
}

impl serde::Serialize for ShiftedIds<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.ids.iter().map(|&id| id.saturating_add(self.offset)))
    }
}

/// A run as read (format 2).
#[derive(serde::Deserialize)]
struct Body {
    start_ms: i64,
    end_ms: i64,
    names: Vec<String>,
    subtasks: Vec<StoredProfile>,
    missing: Missing,
}

/// A profile as read (format 2).
#[derive(serde::Deserialize)]
struct StoredProfile {
    index: u32,
    names: Vec<u32>,
    stacks: Vec<StackCount>,
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

/// `snapshot` as stored: format 2, deflated. CPU work proportional to the run: call it off the
/// async runtime for a big one.
pub fn encode(snapshot: &Snapshot) -> Result<Vec<u8>, String> {
    // Every distinct table once (a run's profiles share one; a profile folded on its own has
    // its own), in the order first met.
    let mut tables: Vec<(&Arc<NameTable>, u32)> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
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
        subtasks.push(ProfileRef {
            index,
            names: ShiftedIds {
                ids: profile.names.ids(),
                offset,
            },
            stacks: &profile.stacks,
            threads: &profile.threads,
            thread_counts: GraphType::ALL.map(|ty| profile.thread_count(ty)),
        });
    }
    let body = BodyRef {
        format: FORMAT,
        start_ms: snapshot.start_ms,
        end_ms: snapshot.end_ms,
        names,
        subtasks,
        missing: &snapshot.missing,
    };
    let mut out =
        flate2::write::DeflateEncoder::new(FORMAT_2_MAGIC.to_vec(), flate2::Compression::fast());
    serde_json::to_writer(&mut out, &body).map_err(|e| e.to_string())?;
    out.finish().map_err(|e| e.to_string())
}

/// The run `run_id` from its stored `body` (format 2 or 1); a clear error (never a panic, never
/// more than [`MAX_STORED_BYTES`] inflated) for a corrupt one. CPU work proportional to the
/// run: call it off the async runtime for a big one.
pub fn decode(run_id: u64, body: &[u8]) -> Result<Snapshot, String> {
    let (format_2, deflated) = match body.strip_prefix(FORMAT_2_MAGIC) {
        Some(rest) => (true, rest),
        None => (false, body),
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
    if !format_2 {
        return decode_v1(run_id, &json);
    }
    let body: Body =
        serde_json::from_slice(&json).map_err(|e| format!("stored run {run_id}: {e}"))?;
    drop(json);
    let table = Arc::new(NameTable::new(body.names));
    let mut subtasks = BTreeMap::new();
    for p in body.subtasks {
        let names = ProfileNames::in_table(Arc::clone(&table), p.names.into_boxed_slice())
            .map_err(|id| {
                format!(
                    "stored run {run_id}: subtask {} names frame {id} of {}",
                    p.index,
                    table.len()
                )
            })?;
        let profile = SubtaskProfile::from_parts(names, p.stacks, p.threads, p.thread_counts)
            .map_err(|e| format!("stored run {run_id}: subtask {}: {e}", p.index))?;
        subtasks.insert(p.index, Arc::new(profile));
    }
    Ok(Snapshot {
        run_id,
        start_ms: body.start_ms,
        end_ms: body.end_ms,
        subtasks,
        missing: body.missing,
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
        flate2::read::DeflateDecoder::new(body.strip_prefix(FORMAT_2_MAGIC).unwrap())
            .read_to_end(&mut inflated)
            .unwrap();
        let deflated = |json: &str| deflated_after(FORMAT_2_MAGIC, json);
        let mut body: serde_json::Value = serde_json::from_slice(&inflated).unwrap();
        body["subtasks"][0]["names"][0] = serde_json::json!(1_000_000);
        let err = decode(3, &deflated(&body.to_string())).unwrap_err();
        assert!(err.contains("names frame 1000000"), "{err}");
        // A stack naming a frame its profile does not have is refused too.
        let mut body: serde_json::Value = serde_json::from_slice(&inflated).unwrap();
        body["subtasks"][0]["stacks"][0]["frames"][0] = serde_json::json!(77);
        let err = decode(3, &deflated(&body.to_string())).unwrap_err();
        assert!(err.contains("subtask 0"), "{err}");
    }
}
