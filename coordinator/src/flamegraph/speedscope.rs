//! The speedscope view: a snapshot in speedscope's own file format
//! (<https://www.speedscope.app/file-format-schema.json>), to drop onto speedscope.app or open
//! with the `speedscope` command-line tool.
//!
//! The file has one table of frames shared by all profiles and one *sampled* profile per
//! subtask, so speedscope's profile switcher flips between subtasks:
//!
//! ```json
//! {"$schema": "https://www.speedscope.app/file-format-schema.json",
//!  "shared": {"frames": [{"name": "main"}, {"name": "spin"}]},
//!  "profiles": [{"type": "sampled", "name": "subtask 0 on tm-1 (ON_CPU)",
//!                "unit": "nanoseconds", "startValue": 0, "endValue": 300000000,
//!                "samples": [[0, 1]], "weights": [300000000]}],
//!  "name": "...", "exporter": "flamegrid 0.1.0", "activeProfileIndex": 0}
//! ```
//!
//! A sample is a stack **root first**, as indexes into `shared.frames`; its weight is its
//! number of samples × the sampling interval in nanoseconds, so speedscope shows time, and
//! `endValue` is the profile's total. Samples are folded per distinct stack (threads and states
//! merged, as in the folded view) and ordered by frame names, so speedscope's time-ordered view
//! draws stacks that share a prefix side by side. A stack cut at the depth limit starts with a
//! `[truncated]` frame; a sample without a readable stack is an empty stack and still counts, so
//! the weights add up to the JSON root's `value` × interval.
//!
//! When there is no graph (disabled, terminated, nothing sampled yet after the wait) the file is
//! still valid: one empty profile whose name says why, as the SVG and folded views explain
//! themselves in their own formats. speedscope opens it and shows the reason as the title.

use super::GraphAnswer;
use super::pprof::{ExportContext, exporter};
use super::profile::Snapshot;
use flamegrid_model::{GraphType, TRUNCATED_FRAME};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The schema URL speedscope expects in `$schema`.
pub const SCHEMA_URL: &str = "https://www.speedscope.app/file-format-schema.json";

/// A speedscope file (`FileFormat.File`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SpeedscopeFile {
    /// Always [`SCHEMA_URL`]: speedscope recognises its format by it.
    #[serde(rename = "$schema")]
    pub schema: String,
    /// Tables shared by all profiles.
    pub shared: Shared,
    /// One sampled profile per subtask.
    pub profiles: Vec<SampledProfile>,
    /// The file's title in speedscope.
    pub name: String,
    /// Which profile speedscope shows first.
    #[serde(rename = "activeProfileIndex")]
    pub active_profile_index: usize,
    /// Who wrote the file: `flamegrid <version>`.
    pub exporter: String,
}

/// `shared`: the frame table every profile's samples index into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Shared {
    /// One frame per distinct name.
    pub frames: Vec<SpeedscopeFrame>,
}

/// A frame (`FileFormat.Frame`): flamegrid knows names only (no file or line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SpeedscopeFrame {
    /// The demangled function name.
    pub name: String,
}

/// A sampled profile (`FileFormat.SampledProfile`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SampledProfile {
    /// Always `sampled`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `subtask <i> on <task manager> (<TYPE>)`.
    pub name: String,
    /// `nanoseconds`: weights are time.
    pub unit: String,
    /// Always 0.
    #[serde(rename = "startValue")]
    pub start_value: u64,
    /// The sum of `weights`.
    #[serde(rename = "endValue")]
    pub end_value: u64,
    /// Stacks, root first, as indexes into `shared.frames`.
    pub samples: Vec<Vec<usize>>,
    /// One weight per sample: samples × interval, in nanoseconds.
    pub weights: Vec<u64>,
}

/// The speedscope file of `answer` for `ty`; see the module docs.
pub fn file(answer: &GraphAnswer, ty: GraphType, ctx: &ExportContext) -> SpeedscopeFile {
    let mut frames = FrameTable::default();
    let (name, profiles) = match answer.graph() {
        Some(snapshot) => {
            let profiles = snapshot
                .subtasks
                .keys()
                .map(|&index| sampled(snapshot, index, ty, ctx, &mut frames))
                .collect();
            let mut name = format!(
                "{}, until {}",
                ctx.title(ty),
                super::svg::utc(snapshot.end_ms)
            );
            let note = answer.note();
            if !note.is_empty() {
                name.push_str(&format!(" ({note})"));
            }
            (name, profiles)
        }
        None => {
            let why = answer.explain();
            let empty = SampledProfile {
                kind: "sampled".into(),
                name: why.clone(),
                unit: "nanoseconds".into(),
                start_value: 0,
                end_value: 0,
                samples: Vec::new(),
                weights: Vec::new(),
            };
            (format!("{}: {why}", ctx.title(ty)), vec![empty])
        }
    };
    SpeedscopeFile {
        schema: SCHEMA_URL.into(),
        shared: Shared {
            frames: frames.frames,
        },
        profiles,
        name,
        active_profile_index: 0,
        exporter: exporter(),
    }
}

/// The shared frame table under construction: one entry per distinct name.
#[derive(Debug, Default)]
struct FrameTable {
    index: HashMap<String, usize>,
    frames: Vec<SpeedscopeFrame>,
}

impl FrameTable {
    fn id(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.frames.len();
        self.frames.push(SpeedscopeFrame { name: name.into() });
        self.index.insert(name.to_string(), i);
        i
    }
}

/// The profile of subtask `index`: its stacks for `ty`, folded by frame path (root first) and
/// ordered by names.
fn sampled(
    snapshot: &Snapshot,
    index: u32,
    ty: GraphType,
    ctx: &ExportContext,
    frames: &mut FrameTable,
) -> SampledProfile {
    let interval = u64::from(ctx.interval_ms) * 1_000_000;
    let mut paths: BTreeMap<Vec<&str>, u64> = BTreeMap::new();
    if let Some(profile) = snapshot.subtasks.get(&index) {
        for s in profile.stacks.iter().filter(|s| ty.accepts(s.state)) {
            let marker = s.truncated.then_some(TRUNCATED_FRAME);
            let names = s
                .frames
                .iter()
                .filter_map(|&f| profile.names.get(f as usize).map(String::as_str));
            *paths
                .entry(marker.into_iter().chain(names).collect())
                .or_insert(0) += s.count;
        }
    }
    let (mut samples, mut weights) = (Vec::with_capacity(paths.len()), Vec::new());
    for (path, count) in paths {
        samples.push(path.into_iter().map(|n| frames.id(n)).collect());
        weights.push(count.saturating_mul(interval));
    }
    SampledProfile {
        kind: "sampled".into(),
        name: format!("subtask {index} on {} ({ty})", ctx.taskmanager(index)),
        unit: "nanoseconds".into(),
        start_value: 0,
        end_value: weights.iter().fold(0u64, |a, w| a.saturating_add(*w)),
        samples,
        weights,
    }
}

/// The `.speedscope.json` body: [`file()`] as compact JSON.
pub fn render(
    answer: &GraphAnswer,
    ty: GraphType,
    ctx: &ExportContext,
) -> serde_json::Result<String> {
    serde_json::to_string(&file(answer, ty, ctx))
}

#[cfg(test)]
mod tests {
    use super::super::profile::tests::{snapshot, spin_and_sleep};
    use super::*;
    use flamegrid_model::{Frame, SampleSetBuilder, SampledThread, ThreadState};
    use std::sync::Arc;

    fn ctx() -> ExportContext {
        ExportContext {
            job_id: "a".repeat(32),
            job_name: "pipeline".into(),
            vertex_id: "b".repeat(32),
            vertex_name: "Source: spin".into(),
            subtask: None,
            interval_ms: 10,
            taskmanagers: BTreeMap::from([(0, "tm-0".into())]),
        }
    }

    /// The stacks of a profile as names, root first, with their weights.
    fn stacks(f: &SpeedscopeFile, p: &SampledProfile) -> Vec<(Vec<String>, u64)> {
        p.samples
            .iter()
            .zip(&p.weights)
            .map(|(s, w)| {
                (
                    s.iter().map(|&i| f.shared.frames[i].name.clone()).collect(),
                    *w,
                )
            })
            .collect()
    }

    #[test]
    fn one_profile_per_subtask_root_first_over_shared_frames() {
        let snap = snapshot(1, &[(0, spin_and_sleep(4)), (1, spin_and_sleep(2))], &[2]);
        let f = file(&GraphAnswer::Ready(Arc::new(snap)), GraphType::Full, &ctx());
        assert_eq!(f.schema, SCHEMA_URL);
        assert!(f.exporter.starts_with("flamegrid "));
        assert_eq!(f.active_profile_index, 0);
        assert!(f.name.contains("missing subtasks: 2"), "{}", f.name);
        let mut names: Vec<&str> = f.shared.frames.iter().map(|x| x.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["main", "sleep", "spin"], "one frame per name");
        assert_eq!(f.profiles.len(), 2);
        assert_eq!(f.profiles[0].name, "subtask 0 on tm-0 (FULL)");
        assert_eq!(f.profiles[1].name, "subtask 1 on unknown (FULL)");
        let ms10 = 10_000_000;
        assert_eq!(
            stacks(&f, &f.profiles[0]),
            [
                (vec!["main".to_string(), "sleep".into()], 4 * ms10),
                (vec!["main".to_string(), "spin".into()], 4 * ms10)
            ]
        );
        for p in &f.profiles {
            assert_eq!(p.kind, "sampled");
            assert_eq!(p.unit, "nanoseconds");
            assert_eq!(p.samples.len(), p.weights.len());
            assert_eq!(p.end_value, p.weights.iter().sum::<u64>());
        }
    }

    #[test]
    fn the_type_filters_and_weights_match_the_tree() {
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
        let set = b.finish();
        let snap = Arc::new(snapshot(1, &[(0, set), (1, spin_and_sleep(3))], &[]));
        for ty in GraphType::ALL {
            let f = file(&GraphAnswer::Ready(Arc::clone(&snap)), ty, &ctx());
            let total: u64 = f.profiles.iter().map(|p| p.end_value).sum();
            assert_eq!(total, snap.tree(ty).value * 10_000_000, "{ty}");
        }
        let f = file(&GraphAnswer::Ready(snap), GraphType::OnCpu, &ctx());
        let s = stacks(&f, &f.profiles[0]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0, Vec::<String>::new(), "unreadable stack: empty");
        assert_eq!(s[1].0, [TRUNCATED_FRAME, "deep", "leaf"], "root first");
        assert!(
            !stacks(&f, &f.profiles[1])
                .iter()
                .any(|(s, _)| s.iter().any(|n| n == "sleep"))
        );
    }

    #[test]
    fn no_graph_is_a_valid_file_that_says_why() {
        for answer in [
            GraphAnswer::Disabled,
            GraphAnswer::Terminated(Default::default()),
            GraphAnswer::Waiting,
        ] {
            let f = file(&answer, GraphType::Full, &ctx());
            assert_eq!(f.profiles.len(), 1);
            assert_eq!(f.profiles[0].name, answer.explain());
            assert!(f.profiles[0].samples.is_empty());
            let text = render(&answer, GraphType::Full, &ctx()).unwrap();
            let back: SpeedscopeFile = serde_json::from_str(&text).unwrap();
            assert_eq!(back, f);
        }
    }

    #[test]
    fn renders_speedscopes_key_names() {
        let answer = GraphAnswer::Ready(Arc::new(snapshot(1, &[(0, spin_and_sleep(1))], &[])));
        let v: serde_json::Value =
            serde_json::from_str(&render(&answer, GraphType::OnCpu, &ctx()).unwrap()).unwrap();
        for key in [
            "$schema",
            "shared",
            "profiles",
            "name",
            "exporter",
            "activeProfileIndex",
        ] {
            assert!(v.get(key).is_some(), "{key} in {v}");
        }
        let p = &v["profiles"][0];
        for key in [
            "type",
            "name",
            "unit",
            "startValue",
            "endValue",
            "samples",
            "weights",
        ] {
            assert!(p.get(key).is_some(), "{key} in {p}");
        }
    }
}
