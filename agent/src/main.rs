//! `flamegrid-agent`: a thin binary over the [`flamegrid_agent`] library.

use clap::Parser;
use flamegrid_agent::cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print as clap formats them.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // Bad flags: one line saying what is wrong (clap's message up to its usage hint, joined,
        // without "error: ").
        Err(e) => {
            let text = e.render().to_string();
            let what = text.split("\n\n").next().unwrap_or("bad arguments");
            let line = what.split_whitespace().collect::<Vec<_>>().join(" ");
            eprintln!("flamegrid-agent: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
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
