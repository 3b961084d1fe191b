//! The pprof view: a snapshot as a gzipped pprof `Profile` (package `perftools.profiles`), the
//! format `go tool pprof`, Pyroscope, Parca and Grafana read.
//!
//! A pprof profile is a set of samples, each a list of location ids (leaf first) with one value
//! per sample type, over interned tables:
//!
//! ```text
//! string_table  ["", "samples", "count", "wall", "nanoseconds", "spin_inner", ...]
//! function      {id 1, name → "spin_inner"}          one per distinct frame name
//! location      {id 1, line [{function_id 1}]}       one per function (flamegrid has names, not
//!                                                    addresses, so a location is its function)
//! sample        {location_id [1, 2, 3], value [COUNT, COUNT × period], label [thread=…, …]}
//! mapping       {id 1, has_functions}                one, holding every location: the frames
//!                                                    are already symbolized
//! ```
//!
//! The rules pprof enforces and this module keeps: `string_table[0]` is `""`; every id is nonzero
//! and defined before use; a sample has exactly one value per `sample_type`.
//!
//! What flamegrid puts in:
//! * `sample_type`: `samples/count` (how many samples) and `wall/nanoseconds` (count × the
//!   sampling interval, `--flamegraph-delay-ms`): flamegrid samples on a wall clock, so a sample
//!   stands for one interval of the thread's life, on CPU or off it. `period_type` is
//!   `wall/nanoseconds` and `period` the interval.
//! * one sample per (stack, thread) of the snapshot that the requested type accepts, labelled
//!   with `thread` (name), `tid` (numeric), `subtask`, `taskmanager` and `state` (the thread
//!   state: `RUNNABLE`, `WAITING`, ...), so `pprof -tagfocus thread=worker-1` narrows to a thread;
//! * a stack cut at the depth limit ends (outermost) in a `[truncated]` frame, as in the JSON
//!   tree; a sample whose stack could not be read has no locations and still counts, so the
//!   `samples` total equals the JSON root's `value`;
//! * `time_nanos` is the run's end, `duration_nanos` its length; `comment`s name the exporter,
//!   the vertex, missing subtasks, and why a profile is empty.
//!
//! When there is no graph (disabled, terminated, nothing sampled yet after the wait) the answer
//! is still a valid profile: no samples, and a comment saying why (`go tool pprof -comments`),
//! the way the SVG and folded views explain themselves in their own format.

use super::GraphAnswer;
use super::profile::Snapshot;
use flamegrid_model::{GraphType, TRUNCATED_FRAME};
use flamegrid_proto::pprof::{
    Function, Label, Line, Location, Mapping, Profile, Sample, ValueType,
};
use flate2::Compression;
use flate2::write::GzEncoder;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;

/// What an export needs to know besides the samples: names for titles and labels, the task
/// manager of each subtask (a snapshot only knows subtask indexes) and the sampling interval
/// (which turns sample counts into time). Shared by the pprof and speedscope views.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportContext {
    /// The job's id.
    pub job_id: String,
    /// The job's name.
    pub job_name: String,
    /// The vertex's id.
    pub vertex_id: String,
    /// The vertex's name.
    pub vertex_name: String,
    /// The subtask the request narrowed to, if any.
    pub subtask: Option<u32>,
    /// The delay between two samples of a thread in the run (`--flamegraph-delay-ms`).
    pub interval_ms: u32,
    /// Task manager id per subtask index.
    pub taskmanagers: BTreeMap<u32, String>,
}

impl ExportContext {
    /// The task manager `subtask` runs on, or `unknown` if the registry no longer says.
    pub fn taskmanager(&self, subtask: u32) -> &str {
        self.taskmanagers
            .get(&subtask)
            .map_or("unknown", String::as_str)
    }

    /// The sampling interval in nanoseconds: what one sample is worth in time.
    pub fn interval_nanos(&self) -> i64 {
        i64::from(self.interval_ms) * 1_000_000
    }

    /// A one-line description, e.g. `ON_CPU samples of vertex Source: spin (ab12…) of job
    /// pipeline (cd34…), subtask 0`.
    pub fn title(&self, ty: GraphType) -> String {
        let mut title = format!(
            "{ty} samples of vertex {} ({}) of job {} ({})",
            self.vertex_name, self.vertex_id, self.job_name, self.job_id
        );
        if let Some(i) = self.subtask {
            title.push_str(&format!(", subtask {i}"));
        }
        title
    }

    /// A file name without extension for a download of `answer`: ids, type, subtask and run end
    /// only (ASCII, no separators), e.g. `flamegrid-<vertexid>-on_cpu-subtask1-1718000123456`.
    pub fn file_stem(&self, ty: GraphType, answer: &GraphAnswer) -> String {
        let mut stem = format!(
            "flamegrid-{}-{}",
            self.vertex_id,
            ty.as_str().to_ascii_lowercase()
        );
        if let Some(i) = self.subtask {
            stem.push_str(&format!("-subtask{i}"));
        }
        if let Some(s) = answer.graph() {
            stem.push_str(&format!("-{}", s.end_ms));
        }
        stem.retain(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        stem
    }
}

/// The exporter's name and version, written into every export.
pub fn exporter() -> String {
    format!("flamegrid {}", env!("CARGO_PKG_VERSION"))
}

/// pprof's string table under construction: index 0 is `""`, every string stored once.
#[derive(Debug)]
struct StringTable {
    strings: Vec<String>,
    index: HashMap<String, i64>,
}

impl StringTable {
    fn new() -> Self {
        StringTable {
            strings: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
    }

    /// The index of `s`, adding it the first time.
    fn id(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// The id of the profile's one mapping, which every location belongs to.
const MAPPING_ID: u64 = 1;

/// Functions and locations under construction: one of each per distinct frame name, sharing
/// the id (ids start at 1: 0 means "none" in pprof).
#[derive(Debug, Default)]
struct Frames {
    ids: HashMap<String, u64>,
    functions: Vec<Function>,
    locations: Vec<Location>,
}

impl Frames {
    /// The location id of the frame `name`, adding its function and location the first time.
    fn location(&mut self, name: &str, strings: &mut StringTable) -> u64 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        let name_id = strings.id(name);
        self.functions.push(Function {
            id,
            name: name_id,
            system_name: name_id,
            ..Function::default()
        });
        self.locations.push(Location {
            id,
            mapping_id: MAPPING_ID,
            line: vec![Line {
                function_id: id,
                ..Line::default()
            }],
            ..Location::default()
        });
        self.ids.insert(name.to_string(), id);
        id
    }
}

/// The pprof profile of `answer` for `ty`; see the module docs for what goes in.
pub fn profile(answer: &GraphAnswer, ty: GraphType, ctx: &ExportContext) -> Profile {
    let mut strings = StringTable::new();
    let wall = ValueType {
        r#type: strings.id("wall"),
        unit: strings.id("nanoseconds"),
    };
    let count = ValueType {
        r#type: strings.id("samples"),
        unit: strings.id("count"),
    };
    let mut profile = Profile {
        sample_type: vec![count, wall],
        period_type: Some(wall),
        period: ctx.interval_nanos(),
        ..Profile::default()
    };
    profile
        .comment
        .push(strings.id(&format!("{}: {}", exporter(), ctx.title(ty))));
    // One mapping for all locations, marked as already symbolized: without it pprof complains
    // that the main binary is unknown, and with `has_functions` it never looks for binaries.
    profile.mapping.push(Mapping {
        id: MAPPING_ID,
        filename: strings.id(&format!("[{}]", ctx.vertex_name)),
        has_functions: true,
        has_inline_frames: true,
        ..Mapping::default()
    });
    let mut frames = Frames::default();
    match answer.graph() {
        Some(snapshot) => {
            profile.time_nanos = snapshot.end_ms.saturating_mul(1_000_000);
            profile.duration_nanos = (snapshot.end_ms - snapshot.start_ms)
                .max(0)
                .saturating_mul(1_000_000);
            let note = answer.note();
            if !note.is_empty() {
                profile.comment.push(strings.id(&note));
            }
            profile.sample = samples(snapshot, ty, ctx, &mut strings, &mut frames);
            if profile.sample.is_empty() {
                let note = format!("no {ty} samples in this run");
                profile.comment.push(strings.id(&note));
            }
        }
        None => profile.comment.push(strings.id(&answer.explain())),
    }
    profile.function = frames.functions;
    profile.location = frames.locations;
    profile.string_table = strings.strings;
    profile
}

/// One pprof sample per (stack, thread) that `ty` accepts, subtask by subtask.
fn samples(
    snapshot: &Snapshot,
    ty: GraphType,
    ctx: &ExportContext,
    strings: &mut StringTable,
    frames: &mut Frames,
) -> Vec<Sample> {
    let period = ctx.interval_nanos();
    let keys = ["thread", "tid", "subtask", "taskmanager", "state"].map(|k| strings.id(k));
    let [thread_key, tid_key, subtask_key, taskmanager_key, state_key] = keys;
    let string_label = |key: i64, str: i64| Label {
        key,
        str,
        ..Label::default()
    };
    let mut out = Vec::new();
    let mut leaf_first: Vec<u64> = Vec::new();
    for (&index, profile) in &snapshot.subtasks {
        let subtask = string_label(subtask_key, strings.id(&index.to_string()));
        let taskmanager = string_label(taskmanager_key, strings.id(ctx.taskmanager(index)));
        // Location ids of this subtask's names, resolved once.
        let locations: Vec<u64> = profile
            .names
            .iter()
            .map(|name| frames.location(name, strings))
            .collect();
        for stack in profile.stacks.iter().filter(|s| ty.accepts(s.state)) {
            leaf_first.clear();
            leaf_first.extend(
                stack
                    .frames
                    .iter()
                    .rev()
                    .filter_map(|&f| locations.get(f as usize).copied()),
            );
            if stack.truncated {
                leaf_first.push(frames.location(TRUNCATED_FRAME, strings));
            }
            let state = string_label(state_key, strings.id(stack.state.as_str()));
            for &(thread, n) in &stack.threads {
                let mut label = Vec::with_capacity(5);
                if let Some(t) = profile.threads.get(thread as usize) {
                    label.push(string_label(thread_key, strings.id(&t.name)));
                    label.push(Label {
                        key: tid_key,
                        num: i64::from(t.tid),
                        ..Label::default()
                    });
                }
                label.extend([subtask, taskmanager, state]);
                let n = i64::try_from(n).unwrap_or(i64::MAX);
                out.push(Sample {
                    location_id: leaf_first.clone(),
                    value: vec![n, n.saturating_mul(period)],
                    label,
                });
            }
        }
    }
    out
}

/// The `.pb.gz` body: [`profile`], protobuf-encoded and gzipped (what `go tool pprof` expects
/// of a file; it also reads it uncompressed, but every producer gzips).
pub fn render(
    answer: &GraphAnswer,
    ty: GraphType,
    ctx: &ExportContext,
) -> std::io::Result<Vec<u8>> {
    let encoded = profile(answer, ty, ctx).encode_to_vec();
    let mut gz = GzEncoder::new(
        Vec::with_capacity(encoded.len() / 4 + 64),
        Compression::default(),
    );
    gz.write_all(&encoded)?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use super::super::profile::tests::{snapshot, spin_and_sleep};
    use super::*;
    use flamegrid_model::{Frame, SampleSetBuilder, SampledThread, ThreadState};
    use std::io::Read;
    use std::sync::Arc;

    fn ctx() -> ExportContext {
        ExportContext {
            job_id: "a".repeat(32),
            job_name: "pipeline".into(),
            vertex_id: "b".repeat(32),
            vertex_name: "Source: spin".into(),
            subtask: None,
            interval_ms: 10,
            taskmanagers: BTreeMap::from([(0, "tm-0".into()), (1, "tm-1".into())]),
        }
    }

    fn string(p: &Profile, i: i64) -> &str {
        &p.string_table[i as usize]
    }

    /// The frame names of a sample, leaf first.
    fn names(p: &Profile, s: &Sample) -> Vec<String> {
        s.location_id
            .iter()
            .map(|id| {
                let loc = p.location.iter().find(|l| l.id == *id).unwrap();
                let f = p
                    .function
                    .iter()
                    .find(|f| f.id == loc.line[0].function_id)
                    .unwrap();
                string(p, f.name).to_string()
            })
            .collect()
    }

    fn label<'a>(p: &'a Profile, s: &Sample, key: &str) -> Option<&'a str> {
        s.label
            .iter()
            .find(|l| string(p, l.key) == key)
            .map(|l| string(p, l.str))
    }

    #[test]
    fn tables_follow_pprofs_rules_and_samples_are_leaf_first() {
        let snap = snapshot(1, &[(0, spin_and_sleep(4)), (1, spin_and_sleep(2))], &[]);
        let p = profile(&GraphAnswer::Ready(Arc::new(snap)), GraphType::Full, &ctx());
        assert_eq!(p.string_table[0], "");
        let mut unique = p.string_table.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), p.string_table.len(), "strings stored once");
        assert!(p.function.iter().all(|f| f.id != 0));
        assert!(p.location.iter().all(|l| l.id != 0 && l.line.len() == 1));
        assert_eq!(p.mapping.len(), 1);
        assert!(p.mapping[0].id != 0 && p.mapping[0].has_functions);
        assert!(p.location.iter().all(|l| l.mapping_id == p.mapping[0].id));
        let mut fnames: Vec<&str> = p.function.iter().map(|f| string(&p, f.name)).collect();
        fnames.sort();
        assert_eq!(fnames, ["main", "sleep", "spin"], "one function per name");
        let types: Vec<(&str, &str)> = p
            .sample_type
            .iter()
            .map(|t| (string(&p, t.r#type), string(&p, t.unit)))
            .collect();
        assert_eq!(types, [("samples", "count"), ("wall", "nanoseconds")]);
        let period_type = p.period_type.unwrap();
        assert_eq!(string(&p, period_type.r#type), "wall");
        assert_eq!(p.period, 10_000_000);
        assert_eq!(p.time_nanos, 1_001_000_000, "run end, ns");
        assert_eq!(p.duration_nanos, 1_000_000_000);

        // 2 subtasks × 2 threads, one stack each.
        assert_eq!(p.sample.len(), 4);
        for s in &p.sample {
            assert_eq!(s.value.len(), 2);
            assert_eq!(s.value[1], s.value[0] * 10_000_000);
            let frames = names(&p, s);
            assert_eq!(frames[1], "main", "leaf first: {frames:?}");
            let thread = label(&p, s, "thread").unwrap();
            assert_eq!(frames[0], thread.trim_end_matches("-0"));
            let subtask = label(&p, s, "subtask").unwrap();
            assert_eq!(
                label(&p, s, "taskmanager").unwrap(),
                format!("tm-{subtask}")
            );
            assert!(
                s.label
                    .iter()
                    .any(|l| string(&p, l.key) == "tid" && l.num > 0)
            );
        }
        let total: i64 = p.sample.iter().map(|s| s.value[0]).sum();
        assert_eq!(total, 12);
    }

    #[test]
    fn the_type_filters_and_counts_match_the_tree() {
        let snap = Arc::new(snapshot(1, &[(0, spin_and_sleep(5))], &[3]));
        for ty in GraphType::ALL {
            let p = profile(&GraphAnswer::Ready(Arc::clone(&snap)), ty, &ctx());
            let total: i64 = p.sample.iter().map(|s| s.value[0]).sum();
            assert_eq!(total as u64, snap.tree(ty).value, "{ty}");
            let states: Vec<&str> = p
                .sample
                .iter()
                .filter_map(|s| label(&p, s, "state"))
                .collect();
            assert!(
                states
                    .iter()
                    .all(|st| ty.accepts(st.parse::<ThreadState>().unwrap())),
                "{ty}: {states:?}"
            );
            let comments: Vec<&str> = p.comment.iter().map(|&c| string(&p, c)).collect();
            assert!(comments[0].starts_with("flamegrid "), "{comments:?}");
            assert!(
                comments.contains(&"missing subtasks: 3 (agent unreachable)"),
                "{comments:?}"
            );
        }
    }

    #[test]
    fn truncated_and_empty_stacks_keep_their_samples() {
        let t = SampledThread {
            pid: 1,
            tid: 7,
            name: "t".into(),
        };
        let mut b = SampleSetBuilder::new();
        b.push(
            &t,
            0,
            ThreadState::Runnable,
            vec![Frame::named("deep"), Frame::named("leaf")],
            true,
        );
        b.push(&t, 1, ThreadState::Runnable, Vec::new(), false);
        let snap = Arc::new(snapshot(1, &[(0, b.finish())], &[]));
        let p = profile(
            &GraphAnswer::Ready(Arc::clone(&snap)),
            GraphType::OnCpu,
            &ctx(),
        );
        let mut stacks: Vec<Vec<String>> = p.sample.iter().map(|s| names(&p, s)).collect();
        stacks.sort();
        assert_eq!(
            stacks,
            [
                vec![],
                ["leaf", "deep", TRUNCATED_FRAME].map(String::from).to_vec()
            ]
        );
        assert_eq!(snap.tree(GraphType::OnCpu).value, 2);
    }

    #[test]
    fn no_graph_is_an_empty_profile_that_says_why() {
        for answer in [
            GraphAnswer::Disabled,
            GraphAnswer::Terminated(Default::default()),
            GraphAnswer::Waiting,
        ] {
            let p = profile(&answer, GraphType::Full, &ctx());
            assert!(p.sample.is_empty() && p.location.is_empty());
            assert_eq!(p.sample_type.len(), 2, "still a well-formed profile");
            let comments: Vec<&str> = p.comment.iter().map(|&c| string(&p, c)).collect();
            assert!(
                comments.contains(&answer.explain().as_str()),
                "{comments:?}"
            );
        }
        let empty = Arc::new(snapshot(1, &[(0, spin_and_sleep(0))], &[]));
        let p = profile(&GraphAnswer::Ready(empty), GraphType::OnCpu, &ctx());
        assert!(
            p.comment
                .iter()
                .any(|&c| string(&p, c) == "no ON_CPU samples in this run")
        );
    }

    #[test]
    fn render_is_gzipped_protobuf() {
        let answer = GraphAnswer::Ready(Arc::new(snapshot(1, &[(0, spin_and_sleep(3))], &[])));
        let gz = render(&answer, GraphType::Full, &ctx()).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip magic");
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .unwrap();
        let decoded = Profile::decode(&raw[..]).unwrap();
        assert_eq!(decoded, profile(&answer, GraphType::Full, &ctx()));
    }

    #[test]
    fn file_stems_are_safe_names() {
        let mut c = ctx();
        let answer = GraphAnswer::Ready(Arc::new(snapshot(1, &[(0, spin_and_sleep(1))], &[])));
        assert_eq!(
            c.file_stem(GraphType::OnCpu, &answer),
            format!("flamegrid-{}-on_cpu-1001", "b".repeat(32))
        );
        c.subtask = Some(1);
        assert_eq!(
            c.file_stem(GraphType::Full, &GraphAnswer::Waiting),
            format!("flamegrid-{}-full-subtask1", "b".repeat(32))
        );
        assert_eq!(c.taskmanager(5), "unknown");
    }
}
