//! The `beta` half of the gears program (see `main.rs`).

use std::hint::black_box;

pub struct Gear;

impl Gear {
    #[inline(always)]
    pub fn poll(x: &mut u64) {
        for i in 0..1_000_000u64 {
            *x = black_box(x.wrapping_mul(41).wrapping_add(i));
        }
    }

    #[inline(never)]
    pub fn step(x: &mut u64) {
        for i in 0..1_000_000u64 {
            *x = black_box(x.wrapping_mul(43).wrapping_add(i));
        }
    }
}

#[inline(never)]
pub fn drive() {
    let mut x = 1;
    loop {
        Gear::poll(&mut x);
    }
}

#[inline(never)]
pub fn drive_step() {
    let mut x = 1;
    loop {
        Gear::step(&mut x);
    }
}
