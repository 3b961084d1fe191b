//! Workloads with known call chains (to be written).
