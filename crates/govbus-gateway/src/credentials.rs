//! Department credentials: bearer tokens stored as SHA-256 hashes, and
//! client certificates (mTLS) stored as the SHA-256 of their DER.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Which department each token or client certificate belongs to. Only hashes are kept.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    by_hash: HashMap<String, String>,
    by_certificate: HashMap<String, String>,
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
    #[serde(default)]
    token_sha256: Option<String>,
    /// Hex SHA-256 of a client certificate's DER (`govbus credential
    /// fingerprint` prints it). Exactly one of the two per entry.
    #[serde(default)]
    certificate_sha256: Option<String>,
}

/// Hex SHA-256 of a token.
pub fn hash_token(token: &str) -> String {
    hex_sha256(token.as_bytes())
}

/// Hex SHA-256 of a certificate's DER: its `certificate_sha256`.
pub fn certificate_fingerprint(der: &[u8]) -> String {
    hex_sha256(der)
}

fn hex_sha256(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in Sha256::digest(bytes) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Credentials {
    /// Parses a credentials file (`[[credential]] department = "...", token_sha256 = "..."`
    /// or `certificate_sha256 = "..."`),
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
        let mut by_certificate = HashMap::new();
        for (i, c) in file.credential.into_iter().enumerate() {
            if !known(&c.department) {
                problems.push(format!(
                    "credential[{i}].department: `{}` is not a department in the catalog",
                    c.department
                ));
            }
            let (field, map, what) = match (c.token_sha256, c.certificate_sha256) {
                (Some(t), None) => (("token_sha256", t), &mut by_hash, "token"),
                (None, Some(h)) => (
                    ("certificate_sha256", h),
                    &mut by_certificate,
                    "certificate",
                ),
                (Some(_), Some(_)) => {
                    problems.push(format!(
                        "credential[{i}]: give token_sha256 or certificate_sha256, not both"
                    ));
                    continue;
                }
                (None, None) => {
                    problems.push(format!(
                        "credential[{i}]: missing token_sha256 or certificate_sha256"
                    ));
                    continue;
                }
            };
            let (name, hash) = (field.0, field.1.to_ascii_lowercase());
            if !is_sha256_hex(&hash) {
                problems.push(format!("credential[{i}].{name}: expected 64 hex digits"));
            } else if map.insert(hash, c.department).is_some() {
                problems.push(format!(
                    "credential[{i}].{name}: the same {what} is listed twice"
                ));
            }
        }
        if problems.is_empty() {
            Ok(Credentials {
                by_hash,
                by_certificate,
            })
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

    /// Adds a client certificate (DER) for a department (tests).
    pub fn with_certificate(mut self, department: &str, der: &[u8]) -> Credentials {
        self.by_certificate
            .insert(certificate_fingerprint(der), department.to_owned());
        self
    }

    /// The department a verified client certificate (DER) belongs to.
    pub fn department_for_certificate(&self, der: &[u8]) -> Option<&str> {
        self.by_certificate
            .get(&certificate_fingerprint(der))
            .map(String::as_str)
    }

    /// The department a bearer token belongs to.
    pub fn department(&self, token: &str) -> Option<&str> {
        self.by_hash.get(&hash_token(token)).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12";

    /// Parses `text` (departments `hrss` and `civil_affairs` exist) and
    /// compares the error text, or "ok".
    fn check(text: &str, expected: &str) {
        let got = match Credentials::parse(Path::new("c.toml"), text, &|d| {
            d == "hrss" || d == "civil_affairs"
        }) {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        assert_eq!(got, expected, "{text}");
    }

    #[test]
    fn entries_take_exactly_one_of_token_or_certificate() {
        let entry = |dept: &str, fields: &str| {
            format!("[[credential]]\ndepartment = \"{dept}\"\n{fields}\n")
        };
        check(&entry("hrss", &format!("token_sha256 = \"{HEX}\"")), "ok");
        check(
            &entry("hrss", &format!("certificate_sha256 = \"{HEX}\"")),
            "ok",
        );
        check(
            &(entry("hrss", &format!("token_sha256 = \"{HEX}\""))
                + &entry("hrss", &format!("certificate_sha256 = \"{HEX}\""))),
            "ok",
        );
        check(
            &entry(
                "hrss",
                &format!("token_sha256 = \"{HEX}\"\ncertificate_sha256 = \"{HEX}\""),
            ),
            "c.toml: credential[0]: give token_sha256 or certificate_sha256, not both",
        );
        check(
            &(entry("nobody", "") + &entry("hrss", "certificate_sha256 = \"xyz\"")),
            "c.toml: credential[0].department: `nobody` is not a department in the catalog; \
             credential[0]: missing token_sha256 or certificate_sha256; \
             credential[1].certificate_sha256: expected 64 hex digits",
        );
        check(
            &(entry("hrss", &format!("certificate_sha256 = \"{HEX}\""))
                + &entry(
                    "civil_affairs",
                    &format!("certificate_sha256 = \"{}\"", HEX.to_uppercase()),
                )),
            "c.toml: credential[1].certificate_sha256: the same certificate is listed twice",
        );
    }

    #[test]
    fn a_certificate_is_looked_up_by_the_sha256_of_its_der() {
        let der = b"not really DER, but hashed all the same";
        let file = format!(
            "[[credential]]\ndepartment = \"hrss\"\ncertificate_sha256 = \"{}\"\n",
            certificate_fingerprint(der).to_uppercase()
        );
        let c = Credentials::parse(Path::new("c.toml"), &file, &|_| true).unwrap_or_default();
        assert_eq!(c.department_for_certificate(der), Some("hrss"));
        assert_eq!(c.department_for_certificate(b"another"), None);
        // A certificate's fingerprint is not a token.
        assert_eq!(c.department(&certificate_fingerprint(der)), None);
    }
}
