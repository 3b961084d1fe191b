//! The driver's command line. `benches/e2e.sh` passes `--bin-dir`, `--report`, `--command` and
//! the Flink flags itself and forwards everything else its user typed, so these names are a
//! contract with that script (and with `benches/README.md`).
//!
//! Like every flamegrid binary, each flag can also come from `FLAMEGRID_<FLAG>` in the
//! environment; the command line wins.

use clap::Parser;
use flamegrid_benches::positive_count;
use std::path::PathBuf;

/// End-to-end and REST benchmarks of flamegrid through real release binaries on loopback:
/// time to the first flame graph, REST throughput under wrk, and resident memory, with Apache
/// Flink's figures beside them when `--flink-results` is given. Normally run by
/// `benches/e2e.sh`, which builds the binaries and runs the Flink reference first.
#[derive(Debug, Clone, Parser)]
#[command(name = "flamegrid-e2e", version)]
pub struct Options {
    /// Directory holding the release `flamegrid-coordinator` and `flamegrid-agent` to measure.
    #[arg(
        long,
        env = "FLAMEGRID_BIN_DIR",
        value_name = "DIR",
        default_value = "target/release"
    )]
    pub bin_dir: PathBuf,

    /// Rounds of the default 100 × 50 ms sampling window (each round measures every shape
    /// once, about 5 s per shape).
    #[arg(long, env = "FLAMEGRID_ROUNDS", value_name = "N", default_value = "5",
          value_parser = positive_count)]
    pub rounds: usize,

    /// Rounds of the short 20 × 10 ms window, where the overhead around the window shows best.
    #[arg(long, env = "FLAMEGRID_SHORT_ROUNDS", value_name = "N", default_value = "9",
          value_parser = positive_count)]
    pub short_rounds: usize,

    /// Alternating wrk rounds of the REST phase; each round runs wrk once per URL (cached flame
    /// graph, /jobs/overview, /config).
    #[arg(long, env = "FLAMEGRID_WRK_ROUNDS", value_name = "N", default_value = "3",
          value_parser = positive_count)]
    pub wrk_rounds: usize,

    /// How long each wrk run lasts, passed to wrk's `-d`: a number with an optional unit s, m
    /// or h (`10s`, `2m`).
    #[arg(long, env = "FLAMEGRID_WRK_DURATION", value_name = "DURATION", default_value = "10s",
          value_parser = wrk_duration)]
    pub wrk_duration: String,

    /// Also write the Markdown report to this file (it always goes to stdout).
    #[arg(long, env = "FLAMEGRID_REPORT", value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// The command that produced the run, quoted in the report so it can be repeated.
    #[arg(
        long,
        env = "FLAMEGRID_COMMAND",
        value_name = "TEXT",
        default_value = "benches/e2e.sh"
    )]
    pub command: String,

    /// JSON figures of a real Flink cluster measured just before
    /// (`benches/flink-reference.sh --results FILE`), put beside flamegrid's with ratios and
    /// used as the bars of the goals.
    #[arg(long, env = "FLAMEGRID_FLINK_RESULTS", value_name = "FILE")]
    pub flink_results: Option<PathBuf>,

    /// Why there are no Flink figures (for example "offline"), quoted in the report, which then
    /// judges the goals against the figures quoted in issue 6.
    #[arg(long, env = "FLAMEGRID_FLINK_NOTE", value_name = "TEXT")]
    pub flink_note: Option<String>,
}

/// A wrk duration, checked here so a typo fails at once instead of after minutes of measuring.
fn wrk_duration(raw: &str) -> Result<String, String> {
    let number = raw.trim_end_matches(['s', 'm', 'h']);
    let unit_len = raw.len() - number.len();
    match number.parse::<u64>() {
        Ok(n) if n > 0 && unit_len <= 1 => Ok(raw.to_owned()),
        _ => Err(format!(
            "wants a positive whole number with an optional unit s, m or h (10s, 2m), got {raw:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        Options::try_parse_from(std::iter::once("flamegrid-e2e").chain(args.iter().copied()))
    }

    #[test]
    fn the_flags_e2e_sh_passes_are_understood() {
        let o = parse(&[
            "--bin-dir",
            "/x/release",
            "--report",
            "/tmp/r.md",
            "--command",
            "benches/e2e.sh --rounds 3",
            "--flink-note",
            "skipped",
            "--rounds",
            "3",
            "--short-rounds",
            "4",
            "--wrk-rounds",
            "2",
            "--wrk-duration",
            "5s",
        ])
        .unwrap();
        assert_eq!(o.bin_dir, PathBuf::from("/x/release"));
        assert_eq!(o.report, Some(PathBuf::from("/tmp/r.md")));
        assert_eq!(o.command, "benches/e2e.sh --rounds 3");
        assert_eq!(o.flink_note.as_deref(), Some("skipped"));
        assert_eq!(o.flink_results, None);
        assert_eq!((o.rounds, o.short_rounds, o.wrk_rounds), (3, 4, 2));
        assert_eq!(o.wrk_duration, "5s");
    }

    #[test]
    fn defaults_are_the_full_run() {
        // Only meaningful without FLAMEGRID_* overrides in the test's environment.
        if std::env::vars().any(|(k, _)| k.starts_with("FLAMEGRID_")) {
            return;
        }
        let o = parse(&[]).unwrap();
        assert_eq!(o.bin_dir, PathBuf::from("target/release"));
        assert_eq!((o.rounds, o.short_rounds, o.wrk_rounds), (5, 9, 3));
        assert_eq!(o.wrk_duration, "10s");
        assert_eq!(o.command, "benches/e2e.sh");
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        for args in [
            ["--rounds", "0"],
            ["--wrk-rounds", "2.5"],
            ["--short-rounds", "many"],
            ["--wrk-duration", "10 seconds"],
            ["--wrk-duration", "s"],
            ["--wrk-duration", "0s"],
            ["--wrk-duration", "5ms"],
        ] {
            let e = parse(&args).unwrap_err().to_string();
            assert!(e.contains(args[0]), "{args:?}: {e}");
        }
        assert!(parse(&["--frobnicate"]).is_err());
        for ok in ["10", "10s", "2m", "1h"] {
            assert_eq!(parse(&["--wrk-duration", ok]).unwrap().wrk_duration, ok);
        }
    }

    #[test]
    fn help_explains_every_flag() {
        Options::command().debug_assert();
        let mut command = Options::command();
        let help = command.render_long_help().to_string();
        for flag in [
            "--bin-dir",
            "--rounds",
            "--short-rounds",
            "--wrk-rounds",
            "--wrk-duration",
            "--report",
            "--command",
            "--flink-results",
            "--flink-note",
            "FLAMEGRID_WRK_DURATION",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
        }
        assert!(command.get_arguments().all(|a| a.get_help().is_some()));
        // The driver's own description, not the package's.
        assert!(help.contains("End-to-end and REST benchmarks"), "{help}");
    }
}
