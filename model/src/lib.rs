//! The data model shared by the agent (which produces samples) and the coordinator (which folds
//! them into flame graphs).
//!
//! Like py-spy's `stack_trace.rs`, there is exactly one representation of "a stack of a thread at
//! an instant" in flamegrid, and every output format (folded text, Flink's JSON tree, SVG, later
//! pprof) is a small view over it. Keeping it in its own crate means the agent and the coordinator
//! can never disagree about what a sample is, and neither has to depend on the other.
//!
//! * [`stack_trace`]: thread states (mapped onto Flink's Java names), frames, samples, and the
//!   interned [`SampleSet`] a sampling run produces.
//! * [`tree`]: Flink's flame graph algorithm, folding samples into an inclusive-count tree.
//! * [`folded`]: the collapsed-stack text format (`a;b;c COUNT`) used by inferno and friends.

pub mod clock;
pub mod folded;
pub mod stack_trace;
pub mod tree;

pub use stack_trace::{
    Frame, GraphType, ParseGraphTypeError, SampleSet, SampleSetBuilder, SampledThread,
    TRUNCATED_FRAME, ThreadSample, ThreadState,
};
pub use tree::FlameNode;
