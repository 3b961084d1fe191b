//! Frame names that never merge two functions: `flamegrid-agent sample --format folded` against
//! the "gears" programs ([`Gears`]), whose threads spin in `alpha::Gear::poll` and
//! `beta::Gear::poll` (inlined into their callers) and `alpha::Gear::step` and
//! `beta::Gear::step` (not inlined). In C++ built with `-g`, and in Rust built with full debug
//! information and with line tables only, each pair must come out as two different frames.
//! With line tables only DWARF names every one of them `poll` or `step`: the outer frames then
//! take the symbol table's path and the inlined ones their declaring source file.
//!
//! The C++ program also spins in two lambdas inlined into `alpha::turn` and `beta::turn`,
//! started by two lambdas of `main` through `std::thread`. GCC records those call operators and
//! `std::thread`'s inlined helpers by their bare names (`operator()`, `_M_invoke<0>`); their
//! scope is only in the DIE tree, and that is where their names must come from.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
mod common;

use common::*;
use flamegrid_workloads::Gears;
use std::process::Command;

/// Samples a freshly started `program` and returns its folded stacks.
fn sample_gears(program: Gears) -> Vec<(Vec<String>, u64)> {
    let running = spawn_until_ready(Command::new(program.path()))
        .unwrap_or_else(|| panic!("{program:?} did not start"));
    let pid = running.0.id().to_string();
    parse_folded(&sample_ok(&[
        "--pid",
        &pid,
        "--samples",
        "20",
        "--interval-ms",
        "2",
        "--format",
        "folded",
    ]))
}

/// Checks that every chain is in some stack, and that the frames under the two `drive`s (and
/// the two `drive_step`s) differ: the two functions are two nodes, never one.
fn assert_pairs_apart(program: Gears, chains: [[&str; 2]; 4]) {
    let folded = sample_gears(program);
    for chain in &chains {
        assert!(
            folded.iter().any(|(stack, _)| contains_chain(stack, chain)),
            "{program:?}: {chain:?} missing in {folded:#?}"
        );
    }
    for (a, b) in [(0, 1), (2, 3)] {
        assert_ne!(chains[a][1], chains[b][1], "test expects two names");
        // Whatever name the frame under alpha's caller has, beta's caller never has it.
        let under = |caller: &str| -> Vec<&String> {
            folded
                .iter()
                .flat_map(|(stack, _)| stack.windows(2))
                .filter(|w| w[0] == caller)
                .map(|w| &w[1])
                .collect()
        };
        let (alpha, beta) = (under(chains[a][0]), under(chains[b][0]));
        assert!(
            alpha.iter().all(|n| !beta.contains(n)),
            "{program:?}: {alpha:?} and {beta:?} share a name"
        );
    }
    let bare: Vec<&String> = folded
        .iter()
        .flat_map(|(stack, _)| stack)
        .filter(|n| *n == "poll" || *n == "step" || *n == "drive" || *n == "drive_step")
        .collect();
    assert!(bare.is_empty(), "{program:?}: bare names {bare:?}");
}

#[test]
fn cpp_same_named_methods_of_two_namespaces_stay_apart() {
    assert_pairs_apart(
        Gears::Cpp,
        [
            ["alpha::drive", "alpha::Gear::poll"],
            ["beta::drive", "beta::Gear::poll"],
            ["alpha::drive_step", "alpha::Gear::step"],
            ["beta::drive_step", "beta::Gear::step"],
        ],
    );
}

#[test]
fn cpp_inlined_lambdas_and_templates_are_named_by_their_dwarf_scope() {
    let folded = sample_gears(Gears::Cpp);
    for chain in [
        [
            "main::{lambda()#1}::operator()",
            "alpha::turn",
            "alpha::turn::{lambda()#1}::operator()",
        ],
        [
            "main::{lambda()#2}::operator()",
            "beta::turn",
            "beta::turn::{lambda()#1}::operator()",
        ],
    ] {
        assert!(
            folded
                .iter()
                .any(|(stack, _)| contains_chain(stack, &chain)),
            "{chain:?} missing in {folded:#?}"
        );
    }
    // std::thread's own inlined helpers carry their class.
    assert!(
        folded
            .iter()
            .flat_map(|(stack, _)| stack)
            .any(|n| { n.starts_with("std::thread::_Invoker<") && n.ends_with(">::_M_invoke<0>") }),
        "std::thread::_Invoker<...>::_M_invoke<0> missing in {folded:#?}"
    );
    let bare: Vec<&String> = folded
        .iter()
        .flat_map(|(stack, _)| stack)
        .filter(|n| !n.contains("::") && (n.contains("operator") || n.starts_with("_M_")))
        .collect();
    assert!(bare.is_empty(), "bare C++ names {bare:?}");
}

#[test]
fn rust_full_debug_info_names_every_frame_by_its_path() {
    assert_pairs_apart(
        Gears::RustFullDebug,
        [
            ["gears::alpha::drive", "gears::alpha::Gear::poll"],
            ["gears::beta::drive", "gears::beta::Gear::poll"],
            ["gears::alpha::drive_step", "gears::alpha::Gear::step"],
            ["gears::beta::drive_step", "gears::beta::Gear::step"],
        ],
    );
}

#[test]
fn rust_line_tables_only_keeps_same_named_functions_apart() {
    assert_pairs_apart(
        Gears::RustLineTables,
        [
            // Inlined: DWARF knows only `poll`; the declaring file tells them apart.
            ["gears::alpha::drive", "poll (alpha.rs)"],
            ["gears::beta::drive", "poll (beta.rs)"],
            // Not inlined: the symbol table has the path.
            ["gears::alpha::drive_step", "gears::alpha::Gear::step"],
            ["gears::beta::drive_step", "gears::beta::Gear::step"],
        ],
    );
}
