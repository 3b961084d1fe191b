//! Property tests: the `/proc` files the sampler parses belong to other processes (a thread may
//! rename itself to anything, including `)` and spaces), so the parsers must answer any text
//! with a value or `None`, never a panic, and must read well-formed lines back exactly.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
use flamegrid_sampler::proc::{parse_stat, syscall_waits_with_timeout};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary text never panics the stat parser.
    #[test]
    fn stat_arbitrary_text_never_panics(text in ".{0,200}") {
        let _ = parse_stat(&text);
    }

    /// Arbitrary text never panics the syscall classifier.
    #[test]
    fn syscall_arbitrary_text_never_panics(text in ".{0,120}") {
        let _ = syscall_waits_with_timeout(&text);
    }

    /// Syscall-shaped lines (number and hex arguments) never panic either.
    #[test]
    fn syscall_shaped_lines_never_panic(
        number in -2i64..500,
        args in prop::collection::vec(any::<u64>(), 0..8),
    ) {
        let mut line = number.to_string();
        for a in args {
            line.push_str(&format!(" 0x{a:x}"));
        }
        let _ = syscall_waits_with_timeout(&line);
    }

    /// A well-formed stat line, whatever the comm (with `)` and spaces), parses back.
    #[test]
    fn stat_well_formed_round_trips(
        pid in any::<u32>(),
        comm in "[ -~]{0,15}",
        state in prop::sample::select(vec!['R', 'S', 'D', 'T', 't', 'Z', 'X', 'I']),
        utime in any::<u64>(),
        stime in any::<u64>(),
        starttime in any::<u64>(),
    ) {
        // Fields 4..=13 then utime (14), stime (15), 16..=21, starttime (22), and a tail.
        let mut fields: Vec<String> = (4..=13).map(|n| n.to_string()).collect();
        fields.push(utime.to_string());
        fields.push(stime.to_string());
        fields.extend((16..=21).map(|n| n.to_string()));
        fields.push(starttime.to_string());
        fields.extend((23..=52).map(|n| n.to_string()));
        let line = format!("{pid} ({comm}) {state} {}\n", fields.join(" "));
        let stat = parse_stat(&line).expect("well-formed stat parses");
        prop_assert_eq!(stat.state, state);
        prop_assert_eq!(stat.utime, utime);
        prop_assert_eq!(stat.stime, stime);
        prop_assert_eq!(stat.starttime, starttime);
    }
}
