//! The webhook sink: batches of CloudEvents (`application/cloudevents-batch+json`)
//! POSTed to the subscriber, signed per Standard Webhooks (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`).
//!
//! - The `webhook-id` is derived from the batch's event ids: the same on
//!   every retry of a batch.
//! - 2xx: delivered. 408, 425, 429, 5xx, timeouts and connection errors:
//!   retried by the one backoff policy (`govbus_kafka::retry`, from 200 ms
//!   up to `max_backoff`, jittered), honouring `Retry-After` (capped by
//!   `max_backoff`). 410: the endpoint is disabled.
//!   3xx: refused (redirects are never followed). Other 4xx: the subscriber
//!   rejected the batch; retrying would not help.
//! - When the retry budget is spent or the batch is rejected, its events go
//!   to `dlq.sub.<subscription>` and delivery moves on.
//! - SSRF guard: the HTTP client's own resolver ([`PublicOnly`]) resolves
//!   the target before every request and refuses it if any address is
//!   loopback, private, link-local, CGNAT, multicast or unspecified, unless
//!   the subscription says `allow_private`. The addresses checked are the
//!   addresses connected to: there is no second lookup for a rebinding DNS
//!   server to answer differently. For the same reason, webhook delivery
//!   ignores `HTTP(S)_PROXY` (a proxy would resolve the name again).
//! - `https://` targets: the server certificate must chain to the Mozilla
//!   root set (webpki-roots), or — when the sink is given `--webhook-ca` — to
//!   one of the CAs in that PEM file instead (a government's own CA).

use std::io::Read as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use govbus_catalog::{SecretSource, SinkSpec};

use std::sync::Arc;

use govbus_kafka::retry::Backoff;

use super::{Batch, Ended, Progress, Sink};
use crate::crypto::{hmac_sha256, sha256_hex};

/// Largest response body read (the rest is discarded).
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// The outcome of one POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// 2xx.
    Delivered,
    /// Worth retrying; `after` from `Retry-After`.
    Retry {
        /// Bounded description (status or error kind; never a body).
        why: String,
        /// The server's requested wait.
        after: Option<Duration>,
    },
    /// Retrying cannot help; dead-letter with this reason code.
    Permanent {
        /// Reason code for `govbus.error.reason`.
        reason: &'static str,
        /// Bounded description.
        why: String,
    },
    /// 410 Gone: disable the endpoint.
    Gone,
}

/// A configured webhook target.
#[derive(Debug, Clone)]
pub struct Webhook {
    agent: ureq::Agent,
    url: String,
    key: Vec<u8>,
    /// Attempts per batch.
    pub max_attempts: u32,
    /// Cap on any wait between attempts.
    pub max_backoff: Duration,
    /// Events per POST.
    pub batch_max: usize,
}

/// Why a webhook cannot be configured.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The spec is not a webhook.
    #[error("not a webhook sink")]
    NotWebhook,
    /// The secret's variable is unset or the secret does not decode.
    #[error("webhook secret: {0}")]
    Secret(String),
    /// The CA file given for https:// webhooks cannot be used.
    #[error("webhook CA file {path}: {detail}")]
    Ca {
        /// The file.
        path: String,
        /// What is wrong (never a secret).
        detail: String,
    },
    /// The URL is not an http:// or https:// URL with a host.
    #[error("webhook URL `{0}` is not an http:// or https:// URL with a host")]
    Url(String),
}

/// Why a webhook secret cannot be used (never shows the secret).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// `whsec_` followed by something that is not base64.
    #[error("`whsec_` secret is not base64: {0}")]
    NotBase64(#[from] base64::DecodeError),
    /// A raw secret shorter than 16 bytes.
    #[error("a secret needs at least 16 bytes (or `whsec_<base64>`); this one has {0}")]
    TooShort(usize),
}

/// Decodes a Standard Webhooks secret: `whsec_<base64>`, or any other text
/// of at least 16 bytes used as raw key bytes.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, SecretError> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => Ok(base64::engine::general_purpose::STANDARD.decode(b64)?),
        None if secret.len() >= 16 => Ok(secret.as_bytes().to_vec()),
        None => Err(SecretError::TooShort(secret.len())),
    }
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mac = hmac_sha256(key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac)
    )
}

/// The `webhook-id` of a batch: stable across retries.
pub fn message_id(subscription: &str, event_ids: &[&str]) -> String {
    let mut parts: Vec<&[u8]> = vec![subscription.as_bytes()];
    for id in event_ids {
        parts.push(b"\n");
        parts.push(id.as_bytes());
    }
    format!("msg_{}", &sha256_hex(&parts)[..32])
}

/// Whether `ip` is a public unicast address: the catalog's own rule, so
/// `catalog check` and this guard refuse the same literal addresses.
pub fn is_public(ip: IpAddr) -> bool {
    govbus_catalog::is_public_ip(ip)
}

fn split_host(url: &str) -> Option<(String, u16)> {
    let uri: ureq::http::Uri = url.parse().ok()?;
    let default = match uri.scheme_str()? {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = uri.authority()?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_owned(), authority.port_u16().unwrap_or(default)))
}

/// The webhook client's resolver: ureq's own, then the SSRF guard on the
/// very addresses the connection will use.
#[derive(Debug, Default)]
pub struct PublicOnly {
    inner: ureq::unversioned::resolver::DefaultResolver,
}

/// The error [`PublicOnly`] refuses a target with (inside an I/O error).
#[derive(Debug, thiserror::Error)]
#[error("the webhook host resolves to a loopback, private or otherwise non-public address")]
pub struct TargetRefused;

impl ureq::unversioned::resolver::Resolver for PublicOnly {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let addrs = self.inner.resolve(uri, config, timeout)?;
        if addrs.is_empty() || addrs.iter().any(|a| !is_public(a.ip())) {
            return Err(ureq::Error::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                TargetRefused,
            )));
        }
        Ok(addrs)
    }
}

fn is_refusal(e: &ureq::Error) -> bool {
    matches!(e, ureq::Error::Io(io) if io.get_ref().is_some_and(|inner| inner.is::<TargetRefused>()))
}

/// Parses `Retry-After`: delta-seconds or an HTTP date.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The roots an https:// webhook's certificate must chain to: the CAs in
/// `ca_file` (PEM) when given, else the Mozilla root set.
fn root_certs(ca_file: Option<&Path>) -> Result<ureq::tls::RootCerts, WebhookError> {
    let Some(path) = ca_file else {
        return Ok(ureq::tls::RootCerts::WebPki);
    };
    let fail = |detail: String| WebhookError::Ca {
        path: path.display().to_string(),
        detail,
    };
    let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {}", e.kind())))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item.map_err(|e| fail(format!("not PEM: {e}")))? {
            ureq::tls::PemItem::Certificate(c) => certs.push(c),
            _ => return Err(fail("holds something other than certificates (a private key?); give only the CA certificates".into())),
        }
    }
    if certs.is_empty() {
        return Err(fail("holds no certificate".into()));
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certs))
}

/// Whether `ca_file` is usable as the webhook CA file (`govbus up --check`).
pub fn check_ca(ca_file: &Path) -> Result<(), WebhookError> {
    root_certs(Some(ca_file)).map(|_| ())
}

impl Webhook {
    /// Builds the client for a webhook spec; `ca_file` replaces the default
    /// roots for https:// targets.
    pub fn new(spec: &SinkSpec, ca_file: Option<&Path>) -> Result<Webhook, WebhookError> {
        let SinkSpec::Webhook {
            url,
            secret,
            allow_private,
            timeout,
            max_attempts,
            max_backoff,
            batch_max,
        } = spec
        else {
            return Err(WebhookError::NotWebhook);
        };
        let text = match secret {
            SecretSource::Env(var) => std::env::var(var).map_err(|_| {
                WebhookError::Secret(format!("environment variable {var} is not set"))
            })?,
            SecretSource::Inline(s) => s.clone(),
            SecretSource::None => return Err(WebhookError::Secret("none configured".into())),
        };
        let key = decode_secret(&text).map_err(|e| WebhookError::Secret(e.to_string()))?;
        split_host(url).ok_or_else(|| WebhookError::Url(url.clone()))?;
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(*timeout))
            .max_redirects(0)
            .http_status_as_error(false)
            .user_agent("govbus-webhook/1")
            .proxy(None)
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(root_certs(ca_file)?)
                    .build(),
            )
            .build();
        let agent = if *allow_private {
            ureq::Agent::new_with_config(config)
        } else {
            ureq::Agent::with_parts(
                config,
                ureq::unversioned::transport::DefaultConnector::default(),
                PublicOnly::default(),
            )
        };
        Ok(Webhook {
            agent,
            url: url.clone(),
            key,
            max_attempts: *max_attempts,
            max_backoff: *max_backoff,
            batch_max: *batch_max,
        })
    }

    /// One signed POST of `body` (blocking; run it off the async threads).
    pub fn post(
        &self,
        msg_id: &str,
        body: &[u8],
        traceparent: Option<govbus_trace::Traceparent>,
    ) -> Attempt {
        let now = SystemTime::now();
        let ts = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = sign(&self.key, msg_id, ts, body);
        let mut request = self
            .agent
            .post(&self.url)
            .header("content-type", "application/cloudevents-batch+json")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature);
        if let Some(tp) = &traceparent {
            request = request.header("traceparent", govbus_trace::as_str(tp));
        }
        let result = request.send(body);
        let mut resp = match result {
            Ok(r) => r,
            Err(e) if is_refusal(&e) => {
                return Attempt::Permanent {
                    reason: "target_refused",
                    why: "the webhook host resolves to a loopback, private or otherwise non-public address; set allow_private = true only for targets you trust".into(),
                }
            }
            Err(e) => {
                let why = match e {
                    ureq::Error::Timeout(_) => "timed out".to_owned(),
                    // A certificate the client cannot verify arrives as an
                    // I/O error around the TLS library's (bounded) error.
                    ureq::Error::Io(io) => match io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                        Some(tls) => format!("TLS: {tls}"),
                        None => format!("connection error: {}", io.kind()),
                    },
                    ureq::Error::ConnectionFailed => "connection failed".to_owned(),
                    ureq::Error::HostNotFound => "host not found".to_owned(),
                    // Bounded texts of the TLS library ("invalid peer
                    // certificate: UnknownIssuer"), never a body.
                    ureq::Error::Tls(what) => format!("TLS: {what}"),
                    ureq::Error::Rustls(e) => format!("TLS: {e}"),
                    other => format!("HTTP client error: {}", error_kind(&other)),
                };
                return Attempt::Retry { why, after: None };
            }
        };
        let status = resp.status().as_u16();
        let after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, now));
        // Drain (bounded) so the connection can be reused; the body is never logged.
        let mut sink = Vec::new();
        let _ = resp
            .body_mut()
            .as_reader()
            .take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut sink);
        match status {
            200..=299 => Attempt::Delivered,
            410 => Attempt::Gone,
            300..=399 => Attempt::Permanent {
                reason: "redirect_refused",
                why: format!("HTTP {status}: redirects are not followed; configure the final URL"),
            },
            408 | 425 | 429 | 500..=599 => Attempt::Retry {
                why: format!("HTTP {status}"),
                after,
            },
            _ => Attempt::Permanent {
                reason: "delivery_rejected",
                why: format!("HTTP {status}: the subscriber rejected the batch"),
            },
        }
    }
}

fn error_kind(e: &ureq::Error) -> &'static str {
    match e {
        ureq::Error::BodyExceedsLimit(_) => "response too large",
        ureq::Error::TooManyRedirects => "redirect",
        ureq::Error::BadUri(_) => "bad URL",
        ureq::Error::Protocol(_) => "protocol error",
        _ => "other",
    }
}

/// Chunks of at most `batch_max` events, in offset order, each one POST
/// retried with jittered backoff (`Retry-After` honoured within the cap)
/// until it is delivered, refused for good (dead-lettered), or the retry
/// budget is spent (dead-lettered). Each chunk goes out under the grant it
/// was prepared under or not at all: the grant is checked before the chunk,
/// before every retry and during every wait.
impl Sink for Arc<Webhook> {
    async fn deliver(&mut self, batch: Batch<'_>) -> Progress {
        let Batch {
            shared,
            policy,
            events,
            shutdown,
            ..
        } = batch;
        let wh = self;
        let sub = policy.subscription();
        let kind = sub.sink.kind();
        let mut progress = Progress::all(0);
        for chunk in events.chunks(wh.batch_max.max(1)) {
            // Each chunk goes out under the grant it was prepared under, or
            // not at all: the rest of the batch is prepared again.
            if let Err(ended) = shared.as_granted(policy) {
                progress.stop = Some(ended);
                return progress;
            }
            let ids: Vec<&str> = chunk.iter().map(|e| e.id.as_str()).collect();
            let msg_id = message_id(&sub.id, &ids);
            let body = serde_json::to_vec(
                &chunk
                    .iter()
                    .map(|e| e.cloudevent_ref(&sub.policy_version))
                    .collect::<Vec<_>>(),
            )
            .unwrap_or_default();
            let body = Arc::new(body);
            // The request's own `traceparent`: its first event's (each
            // event carries its own in the body).
            let trace = chunk.iter().find_map(|e| e.traceparent);
            let mut attempt = 0u32;
            let mut backoff = Backoff::new(
                Duration::from_millis(200).min(wh.max_backoff),
                wh.max_backoff,
            );
            let dead_reason = loop {
                attempt += 1;
                if attempt > 1 {
                    // Checked again right before every retry: the grant may
                    // have changed in the last slice of the wait below.
                    if let Err(ended) = shared.as_granted(policy) {
                        progress.stop = Some(ended);
                        return progress;
                    }
                    shared.metrics.retried(&sub.id, kind);
                }
                let (w, b, m) = (wh.clone(), body.clone(), msg_id.clone());
                let result = tokio::task::spawn_blocking(move || w.post(&m, &b, trace))
                    .await
                    .unwrap_or_else(|_| Attempt::Retry {
                        why: "delivery worker failed".into(),
                        after: None,
                    });
                match result {
                    Attempt::Delivered => break None,
                    Attempt::Gone => {
                        shared.metrics.failed(&sub.id, kind);
                        progress.stop = Some(Ended::Gone);
                        return progress;
                    }
                    Attempt::Permanent { reason, why } => {
                        shared.metrics.failed(&sub.id, kind);
                        tracing::warn!(message = "Webhook refused the batch; dead-lettering it.", subscription = %sub.id, reason, detail = %why, events = chunk.len());
                        break Some((reason, why));
                    }
                    Attempt::Retry { why, after } => {
                        shared.metrics.failed(&sub.id, kind);
                        if attempt >= wh.max_attempts {
                            tracing::warn!(message = "Webhook retry budget spent; dead-lettering the batch.", subscription = %sub.id, attempts = attempt, detail = %why, events = chunk.len());
                            break Some((
                                "retries_exhausted",
                                format!("{why}; {attempt} attempts"),
                            ));
                        }
                        // `Retry-After` replaces the wait, within the cap.
                        let wait = backoff.next_delay();
                        let wait = after.map_or(wait, |a| a.min(backoff.cap()));
                        tracing::info!(message = "Webhook delivery failed; will retry.", subscription = %sub.id, attempt, detail = %why, wait_ms = wait.as_millis() as u64);
                        // Wait in short steps: a revocation or a stop ends the wait.
                        let until = tokio::time::Instant::now() + wait;
                        while tokio::time::Instant::now() < until {
                            if *shutdown.borrow() {
                                progress.stop = Some(Ended::Shutdown);
                                return progress;
                            }
                            // Revoked, or changed (another subscriber, URL,
                            // field policy): this body may no longer go out.
                            if let Err(ended) = shared.as_granted(policy) {
                                progress.stop = Some(ended);
                                return progress;
                            }
                            tokio::time::sleep_until(
                                until.min(tokio::time::Instant::now() + Duration::from_millis(200)),
                            )
                            .await;
                        }
                    }
                }
            };
            if let Some((reason, why)) = dead_reason {
                let base = progress.done;
                progress
                    .dead
                    .extend((base..base + chunk.len()).map(|i| (i, reason, why.clone())));
            }
            progress.done += chunk.len();
        }
        progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_targets_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "2002:c0a8:101::1",
            "2002:7f00:1::",
            "::10.0.0.1",
            "::127.0.0.1",
            "fec0::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::101:101",
            "2002:808:808::1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn hosts_and_ports() {
        assert_eq!(
            split_host("http://127.0.0.1:8080/x"),
            Some(("127.0.0.1".into(), 8080))
        );
        assert_eq!(
            split_host("https://example.org/x?y"),
            Some(("example.org".into(), 443))
        );
        assert_eq!(split_host("http://[::1]:9/"), Some(("::1".into(), 9)));
        assert_eq!(
            split_host("http://u:p@h.example/"),
            Some(("h.example".into(), 80))
        );
        assert_eq!(split_host("http:///x"), None);
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn message_ids_are_stable() {
        assert_eq!(message_id("s", &["a", "b"]), message_id("s", &["a", "b"]));
        assert_ne!(message_id("s", &["a", "b"]), message_id("s", &["a", "c"]));
        assert_ne!(message_id("s", &["a"]), message_id("t", &["a"]));
    }

    fn webhook(url: &str, allow_private: bool) -> Webhook {
        Webhook::new(
            &SinkSpec::Webhook {
                url: url.into(),
                secret: SecretSource::Inline("0123456789abcdef0123".into()),
                allow_private,
                timeout: Duration::from_secs(2),
                max_attempts: 1,
                max_backoff: Duration::from_secs(1),
                batch_max: 10,
            },
            None,
        )
        .unwrap()
    }

    /// The guard sits in the client's resolver: a refused target is never
    /// connected to (so no later lookup can slip a private address in).
    #[test]
    fn a_private_target_is_refused_before_any_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        for host in ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "2130706433"] {
            let url = format!("http://{host}:{port}/hook");
            match webhook(&url, false).post("msg_1", b"[]", None) {
                Attempt::Permanent { reason, .. } => assert_eq!(reason, "target_refused", "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        assert!(
            listener.accept().is_err(),
            "a refused target was connected to"
        );
        // Allowed explicitly, the same target is reached.
        let w = webhook(&format!("http://127.0.0.1:{port}/hook"), true);
        let attempt = std::thread::spawn(move || w.post("msg_1", b"[]", None));
        listener.set_nonblocking(false).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = std::io::Read::read(&mut conn, &mut buf);
        std::io::Write::write_all(
            &mut conn,
            b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(attempt.join().unwrap(), Attempt::Delivered);
    }

    #[test]
    fn urls_that_are_not_http_with_a_host_are_refused_at_configuration() {
        for url in ["ftp://example.org/", "http:///x", "example.org", "http://"] {
            let spec = SinkSpec::Webhook {
                url: url.into(),
                secret: SecretSource::Inline("0123456789abcdef0123".into()),
                allow_private: false,
                timeout: Duration::from_secs(2),
                max_attempts: 1,
                max_backoff: Duration::from_secs(1),
                batch_max: 10,
            };
            assert!(
                matches!(Webhook::new(&spec, None), Err(WebhookError::Url(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn secrets() {
        assert_eq!(decode_secret("whsec_AAEC").unwrap(), vec![0, 1, 2]);
        assert!(matches!(
            decode_secret("short"),
            Err(SecretError::TooShort(5))
        ));
        assert!(matches!(
            decode_secret("whsec_!!"),
            Err(SecretError::NotBase64(_))
        ));
    }
}
