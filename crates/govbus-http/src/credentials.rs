//! Department credentials: bearer tokens stored as SHA-256 hashes, and
//! client certificates (mTLS) stored as the SHA-256 of their DER.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Which department each token or client certificate belongs to. Only hashes
/// are kept. Clones share the table a [`Credentials::watch`] keeps current:
/// a token removed from the file stops working within the watch interval.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// From the file (replaced whole on a reload).
    file: Arc<RwLock<Table>>,
    /// Added in code (`govbus demo`, tests); kept across reloads.
    extra: Table,
}

#[derive(Debug, Clone, Default)]
struct Table {
    by_hash: HashMap<String, String>,
    by_certificate: HashMap<String, String>,
    /// Reloads so far: a holder can tell cheaply whether to check again.
    generation: u64,
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
                file: Arc::new(RwLock::new(Table {
                    by_hash,
                    by_certificate,
                    generation: 0,
                })),
                extra: Table::default(),
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

    /// Reads a credentials file, then follows it every `every` while any
    /// clone of these credentials lives: a change is applied once the file
    /// has read the same twice in a row (an editor's truncate-then-write is
    /// never applied half-written). At start an entry naming a department
    /// `known` does not is an error; in a later change it is left out, with
    /// an error in the log, and the rest applies, so removing a token always
    /// takes effect. A file that no longer parses is refused with an error
    /// in the log, and the previous credentials stay in force.
    pub fn load_and_watch(
        path: &Path,
        known: impl Fn(&str) -> bool + Send + 'static,
        every: Duration,
    ) -> Result<Credentials, CredentialsError> {
        let read = |p: &Path| std::fs::read(p).map(|b| (Sha256::digest(&b).to_vec(), b));
        let (mut applied, bytes) = read(path).map_err(|e| CredentialsError {
            path: path.display().to_string(),
            problems: e.to_string(),
        })?;
        let creds = Credentials::parse(path, &String::from_utf8_lossy(&bytes), &known)?;
        let table: Weak<RwLock<Table>> = Arc::downgrade(&creds.file);
        let path = path.to_owned();
        let mut pending: Option<Vec<u8>> = None;
        let spawned = std::thread::Builder::new()
            .name("govbus-credentials".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let Some(table) = table.upgrade() else {
                    return;
                };
                let Ok((hash, bytes)) = read(&path) else {
                    continue;
                };
                if hash == applied {
                    pending = None;
                    continue;
                }
                if pending.as_ref() != Some(&hash) {
                    pending = Some(hash);
                    continue;
                }
                applied = hash;
                pending = None;
                match Credentials::parse(&path, &String::from_utf8_lossy(&bytes), &|_| true) {
                    Ok(c) => {
                        let mut fresh = c.file.read().map(|t| t.clone()).unwrap_or_default();
                        let listed = fresh.by_hash.len() + fresh.by_certificate.len();
                        fresh.by_hash.retain(|_, d| known(d));
                        fresh.by_certificate.retain(|_, d| known(d));
                        let (tokens, certificates) =
                            (fresh.by_hash.len(), fresh.by_certificate.len());
                        if tokens + certificates < listed {
                            tracing::error!(message = "The credentials file names departments the catalog does not have; those entries are left out.", path = %path.display(), left_out = listed - tokens - certificates);
                        }
                        if let Ok(mut t) = table.write() {
                            fresh.generation = t.generation + 1;
                            *t = fresh;
                        }
                        tracing::info!(message = "Credentials file changed; reloaded.", path = %path.display(), tokens, certificates);
                    }
                    Err(error) => {
                        tracing::error!(message = "The credentials file changed but does not parse; the previous credentials stay in force.", %error);
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::error!(message = "Cannot follow the credentials file; changes need a restart.", %error);
        }
        Ok(creds)
    }

    /// Adds a token for a department (tests, `govbus demo`).
    pub fn with_token(mut self, department: &str, token: &str) -> Credentials {
        self.extra
            .by_hash
            .insert(hash_token(token), department.to_owned());
        self
    }

    /// Adds a client certificate (DER) for a department (tests).
    pub fn with_certificate(mut self, department: &str, der: &[u8]) -> Credentials {
        self.extra
            .by_certificate
            .insert(certificate_fingerprint(der), department.to_owned());
        self
    }

    /// The department a verified client certificate (DER) belongs to.
    pub fn department_for_certificate(&self, der: &[u8]) -> Option<String> {
        self.find(&certificate_fingerprint(der), |t| &t.by_certificate)
    }

    /// Changes whenever the watched file is reloaded: an answer from
    /// [`Credentials::department`] stays good while this stays the same.
    pub fn generation(&self) -> u64 {
        self.file.read().map_or(u64::MAX, |t| t.generation)
    }

    /// The department a bearer token belongs to.
    pub fn department(&self, token: &str) -> Option<String> {
        self.find(&hash_token(token), |t| &t.by_hash)
    }

    fn find(&self, hash: &str, map: impl Fn(&Table) -> &HashMap<String, String>) -> Option<String> {
        if let Some(d) = map(&self.extra).get(hash) {
            return Some(d.clone());
        }
        let file = self.file.read().ok()?;
        map(&file).get(hash).cloned()
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
        assert_eq!(c.department_for_certificate(der).as_deref(), Some("hrss"));
        assert_eq!(c.department_for_certificate(b"another"), None);
        // A certificate's fingerprint is not a token.
        assert_eq!(c.department(&certificate_fingerprint(der)), None);
    }

    #[test]
    fn a_watched_file_is_followed_and_an_unusable_one_is_not_applied() {
        let dir = std::env::temp_dir().join(format!(
            "govbus-cred-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let path = dir.join("credentials.toml");
        let entry = |token: &str| {
            format!(
                "[[credential]]\ndepartment = \"hrss\"\ntoken_sha256 = \"{}\"\n",
                hash_token(token)
            )
        };
        std::fs::write(&path, entry("first")).unwrap_or_default();
        let clone = Credentials::load_and_watch(&path, |d| d == "hrss", Duration::from_millis(20))
            .unwrap_or_default()
            .with_token("demo", "extra");
        // Replaced whole, as the README asks: a truncating write can be
        // read empty twice on a loaded machine, and an empty file is a valid
        // one (no tokens).
        let write = |text: &str| {
            let tmp = dir.join("credentials.toml.new");
            std::fs::write(&tmp, text).unwrap_or_default();
            std::fs::rename(&tmp, &path).unwrap_or_default();
        };
        let eventually = |want: &dyn Fn() -> bool| {
            let start = std::time::Instant::now();
            while !want() && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(10));
            }
            want()
        };
        assert_eq!(clone.department("first").as_deref(), Some("hrss"));
        write(&entry("second"));
        assert!(eventually(&|| clone.department("first").is_none()));
        assert_eq!(clone.department("second").as_deref(), Some("hrss"));
        // Tokens added in code survive a reload.
        assert_eq!(clone.department("extra").as_deref(), Some("demo"));
        // A file that does not parse is not applied.
        write("[[credential]]\ndepartment = \"hrss\"\ntoken_sha256 = \"00\"\n");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(clone.department("second").as_deref(), Some("hrss"));
        // An entry naming an unknown department is left out; the rest applies.
        let mixed = entry("third") + &entry("fourth").replace("\"hrss\"", "\"nobody\"");
        write(&mixed);
        assert!(eventually(&|| clone.department("second").is_none()));
        assert_eq!(clone.department("third").as_deref(), Some("hrss"));
        assert_eq!(clone.department("fourth"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
