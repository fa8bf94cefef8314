//! Client tokens (`--client-tokens FILE`): who may call the evaluation APIs.
//!
//! The file holds one token per line; `#` starts a comment line, blank lines are skipped, and
//! surrounding whitespace is trimmed. A token is visible ASCII without spaces (it travels in a
//! header). Presented tokens are compared with every configured one in constant time, without
//! an early exit, so timing reveals neither which token matched nor how much of one did.
//! Client tokens are separate from `--admin-token`: they never grant admin writes.
//!
//! Must not log or return a token, presented or configured.

use std::path::{Path, PathBuf};

use axum::http::{HeaderMap, header};
use subtle::{Choice, ConstantTimeEq};

/// The header OFREP names for API keys (accepted on every evaluation HTTP endpoint).
pub const API_KEY_HEADER: &str = "x-api-key";

/// The configured client tokens (at least one).
#[derive(Clone)]
pub struct ClientTokens {
    tokens: Vec<Box<[u8]>>,
}

/// A client tokens file that cannot be used; names the file and, for a bad line, its number.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file cannot be read.
    #[error("--client-tokens {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no token (only comments or blank lines).
    #[error(
        "--client-tokens {path}: no token (one per line; `#` comments and blank lines are ignored)"
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A line is not a usable token.
    #[error("--client-tokens {path}, line {line}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the token itself).
        reason: &'static str,
    },
}

/// Whether a request may evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A configured token was presented.
    Allowed,
    /// No token, or one that is not configured.
    Denied,
}

// === impl ClientTokens ===

impl ClientTokens {
    /// Reads and parses a tokens file.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the text of a tokens file; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TokensError> {
        let mut tokens = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let token = line.trim();
            if token.is_empty() || token.starts_with('#') {
                continue;
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(TokensError::Invalid {
                    path: path.to_owned(),
                    line: i + 1,
                    reason: "a token must be visible ASCII without spaces",
                });
            }
            tokens.push(token.as_bytes().into());
        }
        if tokens.is_empty() {
            return Err(TokensError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Self { tokens })
    }

    /// Whether `presented` is one of the tokens. Every token is compared, in constant time.
    pub fn contains(&self, presented: &[u8]) -> bool {
        let mut found = Choice::from(0);
        for token in &self.tokens {
            // Lengths may differ (and that much may leak); equal lengths compare in constant time.
            found |= presented.ct_eq(token);
        }
        found.into()
    }

    /// Whether the request headers carry a configured token, as `Authorization: Bearer <t>` or
    /// `X-API-Key: <t>`.
    pub fn check(&self, headers: &HeaderMap) -> Verdict {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()))
            .or_else(|| headers.get(API_KEY_HEADER).map(|v| trim(v.as_bytes())));
        match presented {
            Some(t) if !t.is_empty() && self.contains(t) => Verdict::Allowed,
            _ => Verdict::Denied,
        }
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Never true (a tokens file without tokens is rejected); for clippy's `len` convention.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

impl std::fmt::Debug for ClientTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens themselves.
        f.debug_struct("ClientTokens")
            .field("count", &self.tokens.len())
            .finish()
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
pub fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = trim(value);
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.first()?.is_ascii_whitespace() {
        return None;
    }
    Some(trim(rest))
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClientTokens, TokensError> {
        ClientTokens::parse(text, Path::new("tokens.txt"))
    }

    #[test]
    fn parses_lines_comments_and_blanks() {
        let t = parse("# fleet A\n  tok-a  \n\n# fleet B\ntok-b\r\n").unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.contains(b"tok-a") && t.contains(b"tok-b"));
        assert!(!t.contains(b"tok-") && !t.contains(b"tok-ab") && !t.contains(b""));
        assert!(!format!("{t:?}").contains("tok"));
    }

    #[test]
    fn empty_or_bad_files_are_errors_naming_the_line() {
        for text in ["", "\n\n", "# only a comment\n   \n"] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains("--client-tokens tokens.txt: no token"), "{e}");
        }
        let e = parse("good\nhas space\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains("has space"), "the token is not echoed: {e}");
        let e = parse("ok\n\u{e9}t\u{e9}\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn headers_bearer_or_api_key() {
        let t = parse("s3cret\n").unwrap();
        let check = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, v.parse().unwrap());
            }
            t.check(&h)
        };
        assert_eq!(
            check(&[("authorization", "Bearer s3cret")]),
            Verdict::Allowed
        );
        assert_eq!(
            check(&[("authorization", "bearer   s3cret ")]),
            Verdict::Allowed
        );
        assert_eq!(check(&[("x-api-key", "s3cret")]), Verdict::Allowed);
        assert_eq!(check(&[]), Verdict::Denied);
        assert_eq!(check(&[("authorization", "Bearer wrong")]), Verdict::Denied);
        assert_eq!(check(&[("authorization", "Basic s3cret")]), Verdict::Denied);
        assert_eq!(check(&[("authorization", "Bearers3cret")]), Verdict::Denied);
        assert_eq!(check(&[("authorization", "Bearer ")]), Verdict::Denied);
        assert_eq!(check(&[("x-api-key", "")]), Verdict::Denied);
    }
}
