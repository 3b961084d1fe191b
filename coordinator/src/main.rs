//! `flamegrid-coordinator`: CLI and wiring only; everything else lives in the library.

use clap::Parser;
use flamegrid_coordinator::config::{CoordinatorConfig, apply_config_file};
use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
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
