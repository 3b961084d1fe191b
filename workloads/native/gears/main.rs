//! Two functions that share a bare name in two modules, both hot, for the frame-name tests:
//! `alpha::Gear::poll` and `beta::Gear::poll` are always inlined into `alpha::drive` and
//! `beta::drive`; `alpha::Gear::step` and `beta::Gear::step` are never inlined. One thread
//! spins in each of the four. Built twice: with line tables only and with full debug info.
//!
//! Prints `ready` once every thread runs; exits when stdin reaches end-of-file.

mod alpha;
mod beta;

use std::io::{Read, Write};

fn main() {
    let threads: [fn(); 4] = [alpha::drive, beta::drive, alpha::drive_step, beta::drive_step];
    for run in threads {
        std::thread::spawn(run);
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}
