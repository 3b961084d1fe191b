//! Shared helpers for the benchmarks (to be written).
