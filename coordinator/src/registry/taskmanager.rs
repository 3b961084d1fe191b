//! A registered agent, which Flink's vocabulary calls a task manager.
//!
//! With the embedded SQLite store, task managers live in memory only: they are facts about *now*
//! (who is alive, what the host looks like), and after a coordinator restart each agent's next
//! heartbeat is answered with `reregister = true`, so the table refills within one heartbeat
//! interval. With the shared PostgreSQL store (`--database-url`) they are also in the database,
//! so that every replica knows every agent (see `replication.rs`).

use std::collections::BTreeMap;
use std::time::Instant;

/// Facts about an agent's host, as the agent reported them at registration (free memory is
/// refreshed by every heartbeat).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HostFacts {
    /// The host's name.
    pub hostname: String,
    /// Logical CPUs.
    pub cpu_cores: u32,
    /// Bytes of RAM.
    pub physical_memory: u64,
    /// Bytes of RAM free at the last heartbeat.
    pub free_memory: u64,
    /// e.g. "Debian GNU/Linux 12".
    pub os: String,
    /// e.g. "6.1.0-18-amd64".
    pub kernel: String,
    /// The agent's crate version.
    pub agent_version: String,
}

/// One live agent.
#[derive(Debug, Clone)]
pub struct TaskManager {
    /// The agent's id (Flink's `ResourceID`: any string, may contain `:`).
    pub id: String,
    /// Where its Sampling service listens, e.g. `http://10.0.0.5:6122`.
    pub address: String,
    /// Host facts.
    pub host: HostFacts,
    /// The agent's own pid.
    pub agent_pid: u32,
    /// When it (last) registered, ms since the epoch.
    pub registered_ms: i64,
    /// When its last heartbeat (or registration) arrived, ms since the epoch.
    pub last_heartbeat_ms: i64,
    /// The same instant on the monotonic clock, for the timeout.
    pub last_heartbeat: Instant,
    /// Host metrics from the last heartbeat, by Flink-style metric name.
    pub metrics: BTreeMap<String, f64>,
    /// The IP address it registered from: a live id may only be re-registered from the same
    /// place without credentials (see the registry's "Agent identity").
    pub peer_ip: Option<std::net::IpAddr>,
    /// The DER of the TLS client certificate it registered with (mutual TLS), if any.
    pub tls_identity: Option<Vec<u8>>,
    /// The replica that vouches for its heartbeats (a shared store only): the one it heartbeats
    /// to, as the database last said. Other replicas keep it alive from that replica's own
    /// refreshed row instead of a heartbeat time written per agent (see `replication.rs`).
    pub vouched_by: Option<String>,
}

impl TaskManager {
    /// `host:port` of the agent's address (Flink's `endpoint` of a subtask).
    pub fn endpoint(&self) -> String {
        endpoint_of_address(&self.address)
    }

    /// The port of the agent's address (Flink's `dataPort`), or -1 when it has none.
    pub fn data_port(&self) -> i64 {
        self.endpoint()
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .map_or(-1, i64::from)
    }

    /// Every metric this task manager can report: the agent's, plus the host facts under
    /// `System.*` names.
    pub fn all_metrics(&self) -> BTreeMap<String, f64> {
        let mut m = self.metrics.clone();
        m.entry("System.CPU.Cores".into())
            .or_insert(f64::from(self.host.cpu_cores));
        m.entry("System.Memory.Total".into())
            .or_insert(self.host.physical_memory as f64);
        m.entry("System.Memory.Free".into())
            .or_insert(self.host.free_memory as f64);
        m
    }
}

/// `http://host:port/path` → `host:port`.
pub fn endpoint_of_address(address: &str) -> String {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_strips_scheme_and_path() {
        assert_eq!(endpoint_of_address("http://10.0.0.5:6122"), "10.0.0.5:6122");
        assert_eq!(endpoint_of_address("https://[::1]:7/x"), "[::1]:7");
        assert_eq!(endpoint_of_address("h:1"), "h:1");
    }
}
