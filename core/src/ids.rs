//! Identifiers that cross process boundaries: client ids and org ids.

/// The org every deployment has.
pub const ROOT_ORG: &str = "root";

/// Longest org id accepted.
pub const MAX_ORG_LEN: usize = 64;

/// Checks a client id: `C.` and 16 hex digits.
pub fn valid_client_id(id: &str) -> bool {
    id.len() == 18 && id.starts_with("C.") && id[2..].bytes().all(|c| c.is_ascii_hexdigit())
}

/// Checks an org id: 1 to 64 characters of letters, digits, `_`, `-` and `.`.
pub fn valid_org(org: &str) -> bool {
    !org.is_empty()
        && org.len() <= MAX_ORG_LEN
        && org
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Checks a node name: 1 to 64 letters, digits, `-` and `_` (it is one NATS subject token
/// and a NATS user's name).
pub fn valid_node(node: &str) -> Result<(), String> {
    if node.is_empty()
        || node.len() > 64
        || !node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "node name {node:?} must be 1 to 64 letters, digits, '-' or '_'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_c_dot_and_16_hex_digits() {
        assert!(valid_client_id("C.0123456789abcdef"));
        assert!(!valid_client_id("C.0123456789abcde"));
        assert!(!valid_client_id("X.0123456789abcdef"));
        assert!(!valid_client_id("C.0123456789abcdeg"));
    }

    #[test]
    fn org_ids_are_short_and_plain() {
        assert!(valid_org("root"));
        assert!(valid_org("O.a-b_c"));
        assert!(!valid_org(""));
        assert!(!valid_org("a/b"));
        assert!(!valid_org(&"a".repeat(MAX_ORG_LEN + 1)));
    }
}
