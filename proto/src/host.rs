//! What a flamegrid process says about its host: name, OS, kernel, CPUs, memory, and Flink-style
//! host metrics.
//!
//! Both sides of the contract report it: the agent in its registration and heartbeats
//! ([`v1::HostInfo`], `System.*` metrics), the coordinator in `/jobmanager/environment`. One
//! probe for both means a coordinator and an agent on the same host report the same values.
//! Every text is cut to [`MAX_HOST_FACT_BYTES`]: the coordinator shows them to anyone reading
//! `/taskmanagers`.

use crate::v1;
use std::collections::HashMap;
use sysinfo::{MemoryRefreshKind, System};

/// Longest host fact (host name, OS, kernel, version) sent at registration, in bytes.
pub const MAX_HOST_FACT_BYTES: usize = 256;

/// Host facts and metrics from sysinfo and `/proc`. Kept between heartbeats because CPU usage
/// is a difference between two readings.
#[derive(Debug)]
pub struct HostProbe {
    system: Option<System>,
}

impl Default for HostProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl HostProbe {
    /// Takes the first readings (CPU usage needs a previous one to compare with).
    pub fn new() -> Self {
        let system = match System::new() {
            Ok(mut s) => {
                s.refresh_cpu_all();
                s.refresh_memory();
                Some(s)
            }
            Err(e) => {
                tracing::warn!(error = %e, "sysinfo is unavailable; host facts will be partial");
                None
            }
        };
        HostProbe { system }
    }

    /// What the registration says about the host.
    pub fn host_info(&mut self) -> v1::HostInfo {
        let logical_cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let (physical_memory, free_memory, cpu_cores) = match &mut self.system {
            Some(s) => {
                s.refresh_memory();
                let cores = if s.cpus().is_empty() {
                    logical_cpus
                } else {
                    s.cpus().len() as u32
                };
                (s.total_memory(), s.available_memory(), cores)
            }
            None => (0, 0, logical_cpus),
        };
        let os = match (System::name(), System::os_version()) {
            (Ok(name), Ok(version)) => format!("{name} {version}"),
            (Ok(name), Err(_)) => name,
            _ => std::env::consts::OS.to_string(),
        };
        // Bounded: the coordinator shows these to anyone reading /taskmanagers.
        v1::HostInfo {
            hostname: bounded(host_name()),
            cpu_cores,
            physical_memory,
            free_memory,
            os: bounded(os),
            kernel: bounded(System::kernel_version().unwrap_or_default()),
            // Every crate of the workspace shares one version: this is the agent's too.
            agent_version: bounded(env!("CARGO_PKG_VERSION").to_string()),
        }
    }

    /// Memory the host can still give out, in bytes ("available", which counts reclaimable
    /// cache: `MemFree` alone makes every busy Linux host look full).
    pub fn free_memory(&mut self) -> u64 {
        match &mut self.system {
            Some(s) => {
                s.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
                s.available_memory()
            }
            None => 0,
        }
    }

    /// Host metrics by Flink-style dotted name.
    pub fn metrics(&mut self) -> HashMap<String, f64> {
        let mut m = HashMap::new();
        if let Some(s) = &mut self.system {
            s.refresh_cpu_usage();
            s.refresh_memory();
            m.insert("System.CPU.Usage".into(), f64::from(s.global_cpu_usage()));
            m.insert("System.CPU.Cores".into(), s.cpus().len() as f64);
            m.insert("System.Memory.Total".into(), s.total_memory() as f64);
            m.insert("System.Memory.Used".into(), s.used_memory() as f64);
            m.insert("System.Memory.Free".into(), s.free_memory() as f64);
            m.insert(
                "System.Memory.Available".into(),
                s.available_memory() as f64,
            );
            m.insert("System.Swap.Total".into(), s.total_swap() as f64);
            m.insert("System.Swap.Used".into(), s.used_swap() as f64);
        }
        if let Ok(load) = System::load_average() {
            m.insert("System.CPU.Load1".into(), load.one);
            m.insert("System.CPU.Load5".into(), load.five);
            m.insert("System.CPU.Load15".into(), load.fifteen);
        }
        if let Some((running, total)) = scheduling_entities() {
            m.insert("System.Threads.Running".into(), running as f64);
            m.insert("System.Threads.Count".into(), total as f64);
        }
        if let Ok(uptime) = System::uptime() {
            m.insert("System.Uptime".into(), uptime as f64);
        }
        m
    }
}

/// `text` cut to [`MAX_HOST_FACT_BYTES`] (on a character boundary).
fn bounded(mut text: String) -> String {
    if text.len() > MAX_HOST_FACT_BYTES {
        let mut end = MAX_HOST_FACT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Runnable and total threads on the host, from `/proc/loadavg` (`0.10 0.20 0.30 2/345 6789`).
fn scheduling_entities() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let field = text.split_whitespace().nth(3)?;
    let (running, total) = field.split_once('/')?;
    Some((running.parse().ok()?, total.parse().ok()?))
}

/// The host's name, or `localhost` when the system will not say.
pub fn host_name() -> String {
    System::host_name()
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_facts_and_metrics_are_filled() {
        let mut p = HostProbe::new();
        let info = p.host_info();
        assert!(!info.hostname.is_empty());
        assert!(info.cpu_cores >= 1);
        assert!(info.physical_memory > 0);
        assert!(!info.kernel.is_empty());
        let m = p.metrics();
        for name in [
            "System.CPU.Usage",
            "System.CPU.Load1",
            "System.Memory.Total",
            "System.Threads.Count",
        ] {
            assert!(m.contains_key(name), "missing {name}: {m:?}");
        }
    }
}
