//! What the coordinator's benches share: a fleet of agents registered through the real
//! `Registry` API (no gRPC: the benches measure what the registry and REST do with them).

use flamegrid_coordinator::registry::Registry;
use flamegrid_proto::v1;

/// The id of simulated agent `a`.
pub fn agent_id(a: usize) -> String {
    format!("agent-{a:04}")
}

/// Registers agents `0..agents` with `registry`, each at an address of its own.
pub fn register_agents(registry: &Registry, agents: usize) {
    for a in 0..agents {
        registry
            .register_taskmanager(v1::RegisterRequest {
                agent_id: agent_id(a),
                address: format!("http://10.0.{}.{}:6122", a / 250, a % 250),
                host: None,
                pid: 1,
            })
            .unwrap();
    }
}
