//! A throwaway PKI for TLS tests, and an HTTPS client written by others
//! (Python `httpx`) to call the servers with.
//!
//! [`Pki::new`] makes a CA, a server certificate for `localhost` and
//! `127.0.0.1`, and writes them as PEM files in a temporary directory;
//! [`Pki::client`] issues a client certificate (optionally from another CA).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// A CA with its server certificate, as PEM files in `dir`.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
    ca: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM): the server's `--client-ca`, the client's `verify`.
    pub ca_pem: PathBuf,
    /// The server certificate (PEM): `--tls-cert`.
    pub server_cert: PathBuf,
    /// The server key (PEM): `--tls-key`.
    pub server_key: PathBuf,
}

/// A client certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
    /// The certificate's DER (what `certificate_sha256` hashes).
    pub der: Vec<u8>,
}

fn ca(name: &str) -> anyhow::Result<(Issuer<'static, KeyPair>, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key)?;
    Ok((Issuer::new(params, key), cert.pem()))
}

impl Pki {
    /// A new CA and server certificate.
    pub fn new() -> anyhow::Result<Pki> {
        let dir = tempfile::tempdir()?;
        let (ca, ca_pem) = ca("govbus test CA")?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca)?;
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let p = dir.path().join(name);
            std::fs::write(&p, text).with_context(|| p.display().to_string())?;
            Ok(p)
        };
        Ok(Pki {
            ca_pem: write("ca.pem", &ca_pem)?,
            server_cert: write("server.pem", &cert.pem())?,
            server_key: write("server.key", &key.serialize_pem())?,
            ca,
            dir,
        })
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client certificate with common name `name` issued by this CA.
    pub fn client(&self, name: &str) -> anyhow::Result<ClientCert> {
        self.issue(name, &self.ca)
    }

    /// A client certificate issued by a CA the server does not know.
    pub fn foreign_client(&self, name: &str) -> anyhow::Result<ClientCert> {
        let (other, _) = ca("another CA")?;
        self.issue(name, &other)
    }

    fn issue(&self, name: &str, issuer: &Issuer<'_, KeyPair>) -> anyhow::Result<ClientCert> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, issuer)?;
        let (c, k) = (
            self.dir.path().join(format!("{name}.pem")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem())?;
        std::fs::write(&k, key.serialize_pem())?;
        Ok(ClientCert {
            cert: c,
            key: k,
            der: cert.der().to_vec(),
        })
    }
}

/// What an HTTPS request through `httpx` ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A response: status and body (for a stream, the first `lines` lines).
    Response(u16, String),
    /// No response: the exception's class and message (a refused handshake).
    Failed(String),
}

/// A request made with Python `httpx` (a client written by others).
#[derive(Debug, Clone, Default)]
pub struct Https {
    /// `GET` or `POST`.
    pub method: String,
    /// The URL.
    pub url: String,
    /// The CA to verify the server with.
    pub ca: Option<PathBuf>,
    /// A client certificate to present.
    pub client: Option<ClientCert>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Read a streamed body only until this many lines have arrived.
    pub lines: Option<usize>,
}

const CLIENT: &str = r#"
import json, ssl, sys, httpx
a = json.load(sys.stdin)
# httpx 0.28: TLS settings go in an SSLContext (`cert=` is deprecated).
ctx = ssl.create_default_context(cafile=a["ca"]) if a["ca"] else False
if a["cert"]:
    ctx.load_cert_chain(a["cert"], a["key"])
try:
    with httpx.Client(verify=ctx, timeout=20) as c:
        with c.stream(a["method"], a["url"], headers=a["headers"], content=bytes(a["body"])) as r:
            if a["lines"] is None:
                body = r.read().decode("utf-8", "replace")
            else:
                got = []
                for line in r.iter_lines():
                    got.append(line)
                    if len(got) >= a["lines"]:
                        break
                body = "\n".join(got)
            print(json.dumps({"status": r.status_code, "body": body}))
except Exception as e:
    print(json.dumps({"error": type(e).__name__ + ": " + str(e)}))
"#;

impl Https {
    /// Sends the request (blocking: call it from `spawn_blocking`).
    pub fn send(&self) -> anyhow::Result<Answer> {
        use std::io::Write as _;
        let input = serde_json::json!({
            "method": self.method,
            "url": self.url,
            "ca": self.ca,
            "cert": self.client.as_ref().map(|c| &c.cert),
            "key": self.client.as_ref().map(|c| &c.key),
            "headers": self.headers.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "body": self.body,
            "lines": self.lines,
        });
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(CLIENT)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("run python3 (with httpx)")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or_default();
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("httpx printed {text:?}"))?;
        match (v["status"].as_u64(), v["body"].as_str()) {
            (Some(status), Some(body)) => Ok(Answer::Response(
                u16::try_from(status).unwrap_or(0),
                body.to_owned(),
            )),
            _ => Ok(Answer::Failed(
                v["error"].as_str().unwrap_or_default().to_owned(),
            )),
        }
    }
}
