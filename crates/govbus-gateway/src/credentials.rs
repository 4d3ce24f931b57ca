//! Department credentials: bearer tokens stored as SHA-256 hashes.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Which department each token belongs to. Only hashes are kept.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    by_hash: HashMap<String, String>,
}

/// A credentials file that cannot be used; every problem is listed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problems}")]
pub struct CredentialsError {
    path: String,
    problems: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    credential: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    department: String,
    /// Hex SHA-256 of the token (`govbus credential new` prints it).
    token_sha256: String,
}

/// Hex SHA-256 of a token.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Credentials {
    /// Parses a credentials file (`[[credential]] department = "...", token_sha256 = "..."`),
    /// checking departments against `known`.
    pub fn parse(
        path: &Path,
        text: &str,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<Credentials, CredentialsError> {
        let fail = |problems: String| CredentialsError {
            path: path.display().to_string(),
            problems,
        };
        let file: File = toml::from_str(text).map_err(|e| fail(e.message().to_owned()))?;
        let mut problems = Vec::new();
        let mut by_hash = HashMap::new();
        for (i, c) in file.credential.into_iter().enumerate() {
            if !known(&c.department) {
                problems.push(format!(
                    "credential[{i}].department: `{}` is not a department in the catalog",
                    c.department
                ));
            }
            let hash = c.token_sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                problems.push(format!(
                    "credential[{i}].token_sha256: expected 64 hex digits"
                ));
            } else if by_hash.insert(hash, c.department).is_some() {
                problems.push(format!(
                    "credential[{i}].token_sha256: the same token is listed twice"
                ));
            }
        }
        if problems.is_empty() {
            Ok(Credentials { by_hash })
        } else {
            Err(fail(problems.join("; ")))
        }
    }

    /// Reads a credentials file.
    pub fn load(
        path: &Path,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<Credentials, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|e| CredentialsError {
            path: path.display().to_string(),
            problems: e.to_string(),
        })?;
        Credentials::parse(path, &text, known)
    }

    /// Adds a token for a department (tests, `govbus demo`).
    pub fn with_token(mut self, department: &str, token: &str) -> Credentials {
        self.by_hash
            .insert(hash_token(token), department.to_owned());
        self
    }

    /// The department a bearer token belongs to.
    pub fn department(&self, token: &str) -> Option<&str> {
        self.by_hash.get(&hash_token(token)).map(String::as_str)
    }
}
