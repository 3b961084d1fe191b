//! Builds the native workload programs into `OUT_DIR` and tells the library where they are, and
//! the demo program as a static library for the `flamegrid-demo` binary.
//!
//! The programs are ordinary executables, not libraries linked into Rust: the sampler must see
//! them as foreign processes with their own binaries, shared libraries and unwind tables. `cc`
//! is used only to find the C and C++ compilers the same way every other `-sys` crate does; the
//! command lines are written out here because each program needs exact flags (frame pointers on
//! or off, `-g` for inline records) and must be linked as an executable.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a build script fails by panicking

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Flags every C/C++ program gets: `-O2` like real code, and no identical-code folding, which
/// would merge look-alike functions (`sleep_outer`/`wait_outer`) under one name.
const COMMON_FLAGS: &[&str] = &["-O2", "-fno-ipa-icf", "-pthread", "-Wall", "-Wextra"];

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let native =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("native");
    for file in [
        "workload.c",
        "workload.cpp",
        "rust_workload.rs",
        "demo.c",
        "gears.cpp",
        "gears/main.rs",
        "gears/alpha.rs",
        "gears/beta.rs",
    ] {
        println!("cargo:rerun-if-changed=native/{file}");
    }
    println!("cargo:rerun-if-env-changed=RUSTC");

    let c = cc::Build::new().cargo_metadata(false).get_compiler();
    let cxx = cc::Build::new()
        .cargo_metadata(false)
        .cpp(true)
        .get_compiler();

    let c_fp = out_dir.join("workload-c-fp");
    compile(
        c.path(),
        &native.join("workload.c"),
        &c_fp,
        &["-fno-omit-frame-pointer"],
    );
    let c_nofp = out_dir.join("workload-c-nofp");
    compile(
        c.path(),
        &native.join("workload.c"),
        &c_nofp,
        &["-fomit-frame-pointer"],
    );
    let cpp = out_dir.join("workload-cpp");
    compile(
        cxx.path(),
        &native.join("workload.cpp"),
        &cpp,
        &["-g", "-std=c++17"],
    );
    let demo = out_dir.join("flamegrid-demo");
    compile(c.path(), &native.join("demo.c"), &demo, &["-g"]);
    // The same program once more as a static library for the `flamegrid-demo` binary
    // (src/bin/flamegrid-demo.rs), which Cargo puts next to the other executables in
    // `target/<profile>/`, so `flamegrid-coordinator --demo` finds it wherever the binaries are
    // installed. Its `main` is renamed for the Rust `main` to call; everything else (flags, frame
    // names) is the program above.
    let mut demo_lib = cc::Build::new();
    demo_lib
        .file(native.join("demo.c"))
        .define("main", "flamegrid_demo_main")
        .opt_level(2)
        .debug(true)
        .flag("-pthread")
        .warnings(true)
        .extra_warnings(true);
    // Not an ordinary `-O2` flag everywhere: clang does not know it (and folds nothing here).
    demo_lib.flag_if_supported("-fno-ipa-icf");
    demo_lib.compile("flamegrid_demo");

    let gears_cpp = out_dir.join("gears-cpp");
    compile(
        cxx.path(),
        &native.join("gears.cpp"),
        &gears_cpp,
        &["-g", "-std=c++17"],
    );

    let rust = out_dir.join("workload-rust");
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    // The gears program twice: with line tables only (this project's own release profile, and
    // common elsewhere: no scopes for inlined functions) and with full debug information.
    let gears_rust_lines = out_dir.join("gears-rust-line-tables");
    let gears_rust_full = out_dir.join("gears-rust-full-debug");
    for (output, debuginfo) in [
        (&gears_rust_lines, "debuginfo=line-tables-only"),
        (&gears_rust_full, "debuginfo=2"),
    ] {
        run(Command::new(&rustc)
            .args([
                "--edition",
                "2021",
                "--crate-name",
                "gears",
                "--crate-type",
                "bin",
            ])
            .args(["-C", "opt-level=2", "-C", debuginfo])
            .arg("-o")
            .arg(output)
            .arg(native.join("gears").join("main.rs")));
    }
    run(Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-name",
            "rust_workload",
            "--crate-type",
            "bin",
        ])
        .args(["-C", "opt-level=2", "-g"])
        .arg("-o")
        .arg(&rust)
        .arg(native.join("rust_workload.rs")));

    for (var, path) in [
        ("FLAMEGRID_WORKLOAD_C_FP", &c_fp),
        ("FLAMEGRID_WORKLOAD_C_NOFP", &c_nofp),
        ("FLAMEGRID_WORKLOAD_CPP", &cpp),
        ("FLAMEGRID_WORKLOAD_RUST", &rust),
        ("FLAMEGRID_WORKLOAD_DEMO", &demo),
        ("FLAMEGRID_GEARS_CPP", &gears_cpp),
        ("FLAMEGRID_GEARS_RUST_LINE_TABLES", &gears_rust_lines),
        ("FLAMEGRID_GEARS_RUST_FULL_DEBUG", &gears_rust_full),
    ] {
        println!("cargo:rustc-env={var}={}", path.display());
    }
}

fn compile(compiler: &Path, source: &Path, output: &Path, extra: &[&str]) {
    run(Command::new(compiler)
        .args(COMMON_FLAGS)
        .args(extra)
        .arg("-o")
        .arg(output)
        .arg(source));
}

/// Runs a compiler; a failure stops the build with the compiler's own message.
fn run(command: &mut Command) {
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(status.success(), "{command:?} failed with {status}");
}
