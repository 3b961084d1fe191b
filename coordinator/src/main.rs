//! `flamegrid-coordinator`: CLI and wiring only; everything else lives in the library.

use clap::Parser;
use flamegrid_coordinator::config::{CoordinatorConfig, apply_config_file};
use std::io::IsTerminal;
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc. A sampling run of 10,000 subtasks makes and frees
/// millions of small blocks on the runtime's threads, freed later on others: with glibc, taking
/// in a run's answers cost 2.9 times as much (`fanout` bench), and freed memory stayed in its
/// arenas (RSS climbing run over run). See [`release_memory_promptly`].
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's option number for the purge delay (`mi_option_purge_delay` in `mimalloc.h`,
/// the same in its versions 2 and 3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Gives freed pages back to the system at once instead of a second later (mimalloc's
/// default): runs free tens of MiB each, a second apart, and with the default delay RSS rose
/// to about 400 MiB over a simulated fleet's runs, against about 220 MiB, flat, this way, for
/// no measurable cost in time to the graph. `MIMALLOC_PURGE_DELAY` in the environment still
/// wins, for measuring. Huge pages are off for the same reason (the crate's `no_thp`: 2 MiB
/// pages are purged whole or not at all).
fn release_memory_promptly() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options, which it reads atomically; called once,
        // before the runtime starts.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

fn main() -> ExitCode {
    release_memory_promptly();
    let args: Vec<String> = std::env::args().collect();
    if let Err(e) = apply_config_file(&args) {
        eprintln!("flamegrid-coordinator: {e}");
        return ExitCode::FAILURE;
    }
    let config = CoordinatorConfig::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: a log file or journald gets plain text that grep
        // (and an operator looking for a refused peer) can match.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match flamegrid_coordinator::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flamegrid-coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}
