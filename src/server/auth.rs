//! Bearer-token authentication for the Executor service.
//!
//! The token file (`--auth-token-file`, never tokens on the command line) has one token per line, optionally
//! followed by the catalog jobs that token may run:
//!
//! ```text
//! # comments and blank lines are ignored
//! s3cr3t-token-for-ci
//! token-for-thumbnails  thumbnail,convert
//! ```
//!
//! A call must carry `authorization: Bearer <token>` metadata. A token limited to some jobs may not run others,
//! nor raw commands. Tokens are compared in constant time. The health service stays open to probes.

use std::collections::BTreeSet;
use std::path::Path;

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Any job the server allows.
    Any,
    /// Only these catalog jobs.
    Jobs(BTreeSet<String>),
}

impl Scope {
    /// Whether this scope may run the catalog job `name` (`None`: a raw command).
    pub(crate) fn allows(&self, name: Option<&str>) -> bool {
        match (self, name) {
            (Scope::Any, _) => true,
            (Scope::Jobs(jobs), Some(name)) => jobs.contains(name),
            (Scope::Jobs(_), None) => false,
        }
    }
}

/// The accepted tokens.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tokens {
    tokens: Vec<(Vec<u8>, Scope)>,
}

/// Why a call is not authenticated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// No `authorization` metadata.
    #[error("missing `authorization: Bearer <token>` metadata")]
    Missing,
    /// Metadata present but not a bearer token.
    #[error("the `authorization` metadata is not `Bearer <token>`")]
    Malformed,
    /// Not one of the server's tokens.
    #[error("unknown token")]
    Unknown,
}

impl Tokens {
    /// Reads a token file.
    pub(crate) fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses token-file text.
    pub(crate) fn parse(text: &str) -> Result<Tokens, String> {
        let mut tokens = Vec::new();
        for (n, line) in crate::config::token_lines(text) {
            let mut parts = line.split_whitespace();
            let token = parts.next().unwrap_or_default();
            if token.len() < 16 {
                return Err(format!("line {}: a token must have at least 16 characters", n + 1));
            }
            let scope = match parts.next() {
                None => Scope::Any,
                Some(jobs) => Scope::Jobs(jobs.split(',').filter(|j| !j.is_empty()).map(String::from).collect()),
            };
            if parts.next().is_some() {
                return Err(format!("line {}: expected `TOKEN [job,job...]`", n + 1));
            }
            tokens.push((token.as_bytes().to_vec(), scope));
        }
        if tokens.is_empty() {
            return Err("no tokens".into());
        }
        Ok(Tokens { tokens })
    }

    /// Checks an `authorization` header value; returns the token's scope.
    pub(crate) fn check(&self, authorization: Option<&[u8]>) -> Result<Scope, AuthError> {
        let value = authorization.ok_or(AuthError::Missing)?;
        let token = value.strip_prefix(b"Bearer ").ok_or(AuthError::Malformed)?;
        // Every token is compared, each in constant time, so timing reveals neither which nor how much matched.
        let mut found = None;
        for (candidate, scope) in &self.tokens {
            if constant_time_eq(candidate, token) {
                found = Some(scope.clone());
            }
        }
        found.ok_or(AuthError::Unknown)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_scopes_and_errors() {
        let tokens = Tokens::parse("# ci\nabcdefghijklmnopqrstuvwxyz\n0123456789abcdefgh echo,cat\n").expect("valid");
        assert_eq!(tokens.check(Some(b"Bearer abcdefghijklmnopqrstuvwxyz")), Ok(Scope::Any));
        let limited = tokens.check(Some(b"Bearer 0123456789abcdefgh")).expect("known");
        assert!(limited.allows(Some("echo")) && !limited.allows(Some("sleep")) && !limited.allows(None));
        assert_eq!(tokens.check(None), Err(AuthError::Missing));
        assert_eq!(tokens.check(Some(b"Basic abc")), Err(AuthError::Malformed));
        assert_eq!(tokens.check(Some(b"Bearer abcdefghijklmnopqrstuvwxy")), Err(AuthError::Unknown));
        assert!(Tokens::parse("short").is_err());
        assert!(Tokens::parse("# nothing\n").is_err());
    }
}
