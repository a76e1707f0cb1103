//! Bearer tokens, one per line of a secret file (blank lines and `#` comments ignored): the
//! coordinator's API token file and an agent's metrics token file.

use std::path::Path;
use std::sync::Arc;

/// The tokens a server accepts. Cheap to clone (shared).
#[derive(Clone)]
pub struct Tokens(Arc<Vec<Vec<u8>>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} redacted)", self.0.len())
    }
}

impl Tokens {
    /// Reads the token file `path`; `what` names it in errors ("API token file").
    pub fn load_named(path: &Path, what: &str) -> Result<Self, String> {
        let text = crate::config::read_secret(path).map_err(|e| format!("{what}: {e}"))?;
        let tokens: Vec<Vec<u8>> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(|l| l.as_bytes().to_vec()).collect();
        if tokens.is_empty() {
            return Err(format!("{what} {} holds no token (put one token per line, e.g. from `openssl rand -hex 32`)", path.display()));
        }
        if tokens.iter().any(|t| t.len() < 16) {
            return Err(format!("{what} {}: tokens must be at least 16 characters (e.g. `openssl rand -hex 32`)", path.display()));
        }
        Ok(Tokens(Arc::new(tokens)))
    }

    /// The coordinator's API token file.
    pub fn load(path: &Path) -> Result<Self, String> {
        Self::load_named(path, "API token file")
    }

    /// Constant-time per candidate, so the comparison leaks nothing about the token.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        self.0.iter().fold(false, |ok, t| ok | (t.len() == presented.len() && t.iter().zip(presented).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0))
    }

    /// Whether an `Authorization` header value carries one of the tokens (`Bearer TOKEN`).
    pub fn accepts_header(&self, authorization: Option<&str>) -> bool {
        authorization.and_then(|v| v.strip_prefix("Bearer ")).is_some_and(|t| self.accepts(t.trim().as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn accepts_only_listed_tokens_in_a_bearer_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# metrics\n0123456789abcdef\n\nfedcba9876543210\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = Tokens::load_named(&path, "metrics token file").unwrap();
        assert!(t.accepts_header(Some("Bearer 0123456789abcdef")));
        assert!(t.accepts_header(Some("Bearer fedcba9876543210")));
        assert!(!t.accepts_header(Some("Bearer 0123456789abcde")));
        assert!(!t.accepts_header(Some("0123456789abcdef")));
        assert!(!t.accepts_header(None));
        assert!(!format!("{t:?}").contains("0123"));
        std::fs::write(&path, "short\n").unwrap();
        assert!(Tokens::load_named(&path, "metrics token file").unwrap_err().starts_with("metrics token file"));
    }
}
