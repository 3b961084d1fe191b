//! `flamegrid-agent`: a thin binary over the [`flamegrid_agent`] library.

use clap::Parser;
use flamegrid_agent::cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sample(args) => flamegrid_agent::cli::sample::main(args),
        Command::Run(args) => flamegrid_agent::cli::run::main(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line, no backtrace: the reason and what to do about it.
            eprintln!("flamegrid-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
