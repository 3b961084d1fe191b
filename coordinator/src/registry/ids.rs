//! Flink-style ids: 32 hex digits (128 random bits), written in lower case.
//!
//! Flink parses ids case-insensitively and writes them in lower case; flamegrid does the same, so
//! a client that upper-cases an id still finds its job.

/// A fresh random id: 32 lower-case hex digits.
pub fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The id in canonical (lower-case) form, or `None` when it is not 32 hex digits.
pub fn parse_id(s: &str) -> Option<String> {
    (s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_lower_hex_and_parse_back() {
        let id = random_id();
        assert_eq!(parse_id(&id).as_deref(), Some(id.as_str()));
        assert_eq!(
            parse_id(&id.to_ascii_uppercase()).as_deref(),
            Some(id.as_str())
        );
        assert_eq!(parse_id("xyz"), None);
        assert_eq!(parse_id(&"g".repeat(32)), None);
    }
}
