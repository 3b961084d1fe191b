//! Why a subtask is absent from a flame graph: a fixed vocabulary, shown in every view.
//!
//! A graph built from some subtasks looks exactly like a graph of all of them, so every view
//! names the absent ones and says why: the JSON (`"missing"` plus `"missingReasons"`), the SVG's
//! subtitle, the folded text's `#` header line, the dashboard's note above the graph, and one log
//! line per run at the coordinator. The reasons come from three places:
//!
//! * the registry, before any RPC: a subtask whose agent is not registered any more
//!   ([`MissingReason::NeverConfirmed`] when that agent never confirmed it,
//!   [`MissingReason::AgentLost`] when it had), and a subtask that a heartbeat or the loss of
//!   its agent ended, with the reason kept beside it
//!   ([`crate::registry::job::SubtaskRuntime::absent`]: the liveness report's failure kind, or
//!   agent lost), so that a terminated vertex answers -1 *and why*, and a running one names its
//!   ended subtasks beside the graph of the others;
//! * the fan-out, per agent: the RPC failed (unreachable, timed out, busy, refused the
//!   coordinator's credentials, answered nonsense), and every subtask asked of it is absent;
//! * the agent, per subtask: the `SubtaskFailure` kind it sends beside each failed selector
//!   (process not found, no matching thread, outside the allow-list, refused by the kernel).
//!
//! A run in which nothing delivered, after an older graph, does not hide behind it: the older
//! graph is served with the later run's reasons (`GraphAnswer::Outdated`).
//!
//! The words are fixed so they can be shown to anyone who can read a graph: they never carry an
//! agent's own error text, which may name users, command names or the allow-list (that text goes
//! to the coordinator's log only).

use flamegrid_proto::v1;
use std::collections::BTreeMap;

/// Why one subtask contributed nothing to a run.
///
/// Also kept in the registry beside a subtask that ended (FAILED, or FINISHED because its
/// process vanished), so a graph asked for later still says why: serialized there as its
/// snake-case variant name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum MissingReason {
    /// The agent could not be reached (connection refused, reset, bad address).
    AgentUnreachable,
    /// The agent did not answer before the run's deadline.
    AgentTimedOut,
    /// The agent was still running `--max-concurrent-runs` other runs when time ran out.
    AgentBusy,
    /// The agent refused the coordinator's token or certificate.
    AgentRefusedCredentials,
    /// The agent failed otherwise, or its answer for the subtask was unusable.
    AgentFailed,
    /// The agent found no process for the subtask's selector.
    ProcessNotFound,
    /// The process exists but none of its threads matches the selector.
    NoMatchingThread,
    /// The process is outside the agent's allow-list.
    OutsideAllowList,
    /// The kernel refused to let the agent trace the process.
    RefusedByKernel,
    /// The subtask's agent never confirmed it (no heartbeat since the job was registered) and
    /// is gone or cannot be reached.
    NeverConfirmed,
    /// The subtask's agent had confirmed it but is no longer registered.
    AgentLost,
}

impl MissingReason {
    /// Every reason, in declaration order.
    pub const ALL: [MissingReason; 11] = [
        MissingReason::AgentUnreachable,
        MissingReason::AgentTimedOut,
        MissingReason::AgentBusy,
        MissingReason::AgentRefusedCredentials,
        MissingReason::AgentFailed,
        MissingReason::ProcessNotFound,
        MissingReason::NoMatchingThread,
        MissingReason::OutsideAllowList,
        MissingReason::RefusedByKernel,
        MissingReason::NeverConfirmed,
        MissingReason::AgentLost,
    ];

    /// The words every view shows (the JSON's `missingReasons` values).
    pub fn as_str(self) -> &'static str {
        match self {
            MissingReason::AgentUnreachable => "agent unreachable",
            MissingReason::AgentTimedOut => "agent timed out",
            MissingReason::AgentBusy => "agent busy",
            MissingReason::AgentRefusedCredentials => "agent refused the coordinator's credentials",
            MissingReason::AgentFailed => "agent failed",
            MissingReason::ProcessNotFound => "process not found",
            MissingReason::NoMatchingThread => "no matching thread",
            MissingReason::OutsideAllowList => "outside the allow-list",
            MissingReason::RefusedByKernel => "refused by the kernel",
            MissingReason::NeverConfirmed => "never confirmed (agent lost)",
            MissingReason::AgentLost => "agent lost",
        }
    }

    /// The reason for a subtask the agent answered with a failure of kind `failure` (the
    /// contract's `SubtaskFailure`, as sent on the wire; unknown values from newer agents and
    /// UNSPECIFIED from older ones are [`MissingReason::AgentFailed`]).
    pub fn from_wire(failure: i32) -> MissingReason {
        match v1::SubtaskFailure::try_from(failure) {
            Ok(v1::SubtaskFailure::ProcessNotFound) => MissingReason::ProcessNotFound,
            Ok(v1::SubtaskFailure::NoMatchingThread) => MissingReason::NoMatchingThread,
            Ok(v1::SubtaskFailure::OutsideAllowList) => MissingReason::OutsideAllowList,
            Ok(v1::SubtaskFailure::RefusedByKernel) => MissingReason::RefusedByKernel,
            _ => MissingReason::AgentFailed,
        }
    }

    /// The reason for every subtask of an agent whose whole call failed with `code`. A call
    /// refused as a whole with PERMISSION_DENIED is one where every selector was refused: the
    /// agent's fixed allow-list phrase tells the allow-list from the kernel (the message itself
    /// is never shown).
    pub fn from_status(code: tonic::Code, message: &str) -> MissingReason {
        use tonic::Code;
        match code {
            Code::Unavailable | Code::Cancelled => MissingReason::AgentUnreachable,
            Code::DeadlineExceeded => MissingReason::AgentTimedOut,
            Code::ResourceExhausted => MissingReason::AgentBusy,
            Code::Unauthenticated => MissingReason::AgentRefusedCredentials,
            Code::NotFound => MissingReason::ProcessNotFound,
            Code::PermissionDenied if message.contains("allow-list") => {
                MissingReason::OutsideAllowList
            }
            Code::PermissionDenied => MissingReason::RefusedByKernel,
            _ => MissingReason::AgentFailed,
        }
    }

    /// Whether the agent itself failed (rather than the subtask's process): for a subtask its
    /// agent never confirmed, that is what [`MissingReason::NeverConfirmed`] says better.
    pub fn is_agent_failure(self) -> bool {
        matches!(
            self,
            MissingReason::AgentUnreachable | MissingReason::AgentTimedOut
        )
    }
}

impl std::fmt::Display for MissingReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The absent subtasks of one run: index → why.
pub type Missing = BTreeMap<u32, MissingReason>;

/// Indexes named per reason in [`describe`] before the rest are only counted: a vertex of
/// 10 000 subtasks behind one dead agent must not make a subtitle of 10 000 numbers.
const NAMED_PER_REASON: usize = 20;

/// One line naming the absent subtasks grouped by reason, e.g.
/// `1, 3 (agent unreachable); 2 (process not found)`; empty when none is absent. Long groups
/// name their first indexes and count the rest. Never ends in a digit, so it can follow `# ` in
/// folded text without being read as a stack.
pub fn describe(missing: &Missing) -> String {
    let mut groups: BTreeMap<MissingReason, Vec<u32>> = BTreeMap::new();
    for (&index, &reason) in missing {
        groups.entry(reason).or_default().push(index);
    }
    let parts: Vec<String> = groups
        .into_iter()
        .map(|(reason, indexes)| {
            let mut named: Vec<String> = indexes
                .iter()
                .take(NAMED_PER_REASON)
                .map(u32::to_string)
                .collect();
            if indexes.len() > NAMED_PER_REASON {
                named.push(format!("and {} more", indexes.len() - NAMED_PER_REASON));
            }
            format!("{} ({reason})", named.join(", "))
        })
        .collect();
    parts.join("; ")
}

/// `missing subtasks: <describe>`: the note the SVG subtitle, the folded header and the
/// exports carry; empty when nothing is absent.
pub fn note(missing: &Missing) -> String {
    if missing.is_empty() {
        String::new()
    } else {
        format!("missing subtasks: {}", describe(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_groups_by_reason_and_never_ends_in_a_digit() {
        let mut m = Missing::new();
        m.insert(3, MissingReason::AgentUnreachable);
        m.insert(1, MissingReason::AgentUnreachable);
        m.insert(2, MissingReason::ProcessNotFound);
        assert_eq!(
            describe(&m),
            "1, 3 (agent unreachable); 2 (process not found)"
        );
        assert_eq!(
            note(&m),
            "missing subtasks: 1, 3 (agent unreachable); 2 (process not found)"
        );
        assert_eq!(note(&Missing::new()), "");
        let many: Missing = (0..10_000)
            .map(|i| (i, MissingReason::NeverConfirmed))
            .collect();
        let text = describe(&many);
        assert!(
            text.ends_with("and 9980 more (never confirmed (agent lost))"),
            "{text}"
        );
        assert!(text.len() < 300);
    }

    #[test]
    fn wire_and_status_map_onto_the_vocabulary() {
        use tonic::Code;
        assert_eq!(
            MissingReason::from_wire(v1::SubtaskFailure::OutsideAllowList as i32),
            MissingReason::OutsideAllowList
        );
        assert_eq!(MissingReason::from_wire(0), MissingReason::AgentFailed);
        assert_eq!(MissingReason::from_wire(999), MissingReason::AgentFailed);
        assert_eq!(
            MissingReason::from_status(
                Code::PermissionDenied,
                "\"j/v/0\": pid 7 is outside this agent's allow-list (...)"
            ),
            MissingReason::OutsideAllowList
        );
        assert_eq!(
            MissingReason::from_status(Code::PermissionDenied, "may not trace pid 7"),
            MissingReason::RefusedByKernel
        );
        assert_eq!(
            MissingReason::from_status(Code::Unavailable, ""),
            MissingReason::AgentUnreachable
        );
        let words: std::collections::HashSet<_> =
            MissingReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(words.len(), MissingReason::ALL.len(), "distinct words");
    }
}
