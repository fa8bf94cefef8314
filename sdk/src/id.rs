//! Identifier rules (docs/spec.md §2): ids match `[A-Za-z0-9_-]{1,64}`, flag keys may also
//! contain `.`, unit values are 1 to 256 bytes of UTF-8.
//!
//! The trace stamp relies on these rules: only `[A-Za-z0-9_~.-]` may appear in it.

/// Longest accepted id or flag key, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Longest accepted unit value (a member id, a device id), in bytes.
pub const MAX_UNIT_LEN: usize = 256;

/// Whether `s` is a valid layer, experiment, cell, holdout or segment id.
pub fn is_valid_id(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `s` is a valid flag key: an id that may also contain `.`.
pub fn is_valid_flag_key(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(is_valid_id("home"));
        assert!(is_valid_id("A-b_9"));
        assert!(is_valid_id(&"x".repeat(64)));
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a.b"));
        assert!(!is_valid_id("a~b"));
        assert!(!is_valid_id("é"));
        assert!(is_valid_flag_key("checkout.new-flow_v2"));
        assert!(!is_valid_flag_key("a b"));
    }
}
