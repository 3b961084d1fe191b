//! `flamegrid-demo`: the pretend streaming pipeline `flamegrid-coordinator --demo` samples.
//!
//! The pipeline is the C program `native/demo.c` (linked in as a static library by `build.rs`,
//! its `main` renamed `flamegrid_demo_main`), so its frame names (`parse_records`, `tokenize`,
//! `hash_field`, ...) are those of native code, as in the tests. This file only makes it an
//! executable Cargo builds into `target/<profile>/`, next to `flamegrid-coordinator` and
//! `flamegrid-agent`, and ships with them.
//!
//! ```text
//! flamegrid-demo              run the pipeline: prints `ready`, exits at end of stdin
//! flamegrid-demo --vertices   print the demo job's vertices as one JSON line and exit
//! ```
//!
//! `--vertices` is how the coordinator learns the job layout ([`demo_vertices`]) without linking
//! this crate: the layout lives with the program whose threads it names.

use flamegrid_workloads::demo_vertices;
use std::process::ExitCode;

unsafe extern "C" {
    /// `main` of `native/demo.c`: starts the pipeline threads, prints `ready`, returns at end
    /// of stdin.
    fn flamegrid_demo_main() -> std::ffi::c_int;
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {}
        [flag] if flag == "--vertices" => {
            println!(
                "{}",
                flamegrid_workloads::demo_vertices_json(demo_vertices())
            );
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("usage: flamegrid-demo [--vertices]");
            return ExitCode::from(2);
        }
    }
    allow_sibling_tracers();
    // SAFETY: the C program's `main` takes no arguments and touches no Rust state.
    let code = unsafe { flamegrid_demo_main() };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Lets any process of this user trace the demo (`PR_SET_PTRACER_ANY`). The demo's agent is its
/// sibling, not its parent, and with `kernel.yama.ptrace_scope=1` (the default of many
/// distributions) only ancestors may trace. The demo holds nothing worth hiding; without Yama
/// the call fails and changes nothing.
fn allow_sibling_tracers() {
    // SAFETY: PR_SET_PTRACER only changes which processes may trace this one.
    unsafe {
        libc::prctl(libc::PR_SET_PTRACER, libc::PR_SET_PTRACER_ANY, 0, 0, 0);
    }
}
