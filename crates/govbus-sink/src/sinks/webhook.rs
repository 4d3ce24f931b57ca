//! The webhook sink: batches of CloudEvents (`application/cloudevents-batch+json`)
//! POSTed to the subscriber, signed per Standard Webhooks (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`).
//!
//! - The `webhook-id` is derived from the batch's event ids: the same on
//!   every retry of a batch.
//! - 2xx: delivered. 408, 425, 429, 5xx, timeouts and connection errors:
//!   retried with exponential backoff and full jitter, honouring
//!   `Retry-After` (capped by `max_backoff`). 410: the endpoint is disabled.
//!   3xx: refused (redirects are never followed). Other 4xx: the subscriber
//!   rejected the batch; retrying would not help.
//! - When the retry budget is spent or the batch is rejected, its events go
//!   to `dlq.sub.<subscription>` and delivery moves on.
//! - SSRF guard: the target host is resolved before every attempt and
//!   refused if any address is loopback, private, link-local, CGNAT,
//!   multicast or unspecified, unless the subscription says `allow_private`.

use std::io::Read as _;
use std::net::{IpAddr, ToSocketAddrs};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use govbus_catalog::{SecretSource, SinkSpec};

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
    host: String,
    port: u16,
    key: Vec<u8>,
    allow_private: bool,
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
    /// The URL has no host.
    #[error("webhook URL `{0}` has no host")]
    Url(String),
}

/// Decodes a Standard Webhooks secret: `whsec_<base64>`, or any other text
/// used as raw key bytes.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("`whsec_` secret is not base64: {e}")),
        None if secret.len() >= 16 => Ok(secret.as_bytes().to_vec()),
        None => Err("a secret needs at least 16 bytes (or `whsec_<base64>`)".into()),
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
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let default = if scheme == "https" { 443 } else { 80 };
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after
            .strip_prefix(':')
            .map_or(Some(default), |p| p.parse().ok())?;
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), p.parse().ok()?)),
        None => Some((authority.to_owned(), default)),
    }
    .filter(|(h, _)| !h.is_empty())
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

impl Webhook {
    /// Builds the client for a webhook spec.
    pub fn new(spec: &SinkSpec) -> Result<Webhook, WebhookError> {
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
        let key = decode_secret(&text).map_err(WebhookError::Secret)?;
        let (host, port) = split_host(url).ok_or_else(|| WebhookError::Url(url.clone()))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(*timeout))
            .max_redirects(0)
            .http_status_as_error(false)
            .user_agent("govbus-webhook/1")
            .build()
            .into();
        Ok(Webhook {
            agent,
            url: url.clone(),
            host,
            port,
            key,
            allow_private: *allow_private,
            max_attempts: *max_attempts,
            max_backoff: *max_backoff,
            batch_max: *batch_max,
        })
    }

    /// Resolves the target and applies the SSRF guard.
    fn guard(&self) -> Result<(), Attempt> {
        if self.allow_private {
            return Ok(());
        }
        let addrs: Vec<IpAddr> = match (self.host.as_str(), self.port).to_socket_addrs() {
            Ok(a) => a.map(|s| s.ip()).collect(),
            Err(e) => {
                return Err(Attempt::Retry {
                    why: format!("cannot resolve the webhook host: {}", e.kind()),
                    after: None,
                })
            }
        };
        if addrs.is_empty() || addrs.iter().any(|ip| !is_public(*ip)) {
            return Err(Attempt::Permanent {
                reason: "target_refused",
                why: "the webhook host resolves to a loopback, private or otherwise non-public address; set allow_private = true only for targets you trust".into(),
            });
        }
        Ok(())
    }

    /// One signed POST of `body` (blocking; run it off the async threads).
    pub fn post(&self, msg_id: &str, body: &[u8]) -> Attempt {
        if let Err(refused) = self.guard() {
            return refused;
        }
        let now = SystemTime::now();
        let ts = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = sign(&self.key, msg_id, ts, body);
        let result = self
            .agent
            .post(&self.url)
            .header("content-type", "application/cloudevents-batch+json")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .send(body);
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                let why = match e {
                    ureq::Error::Timeout(_) => "timed out".to_owned(),
                    ureq::Error::Io(io) => format!("connection error: {}", io.kind()),
                    ureq::Error::ConnectionFailed => "connection failed".to_owned(),
                    ureq::Error::HostNotFound => "host not found".to_owned(),
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

/// Exponential backoff with full jitter: a wait in `[d/2, d]` where
/// `d = min(cap, 200 ms × 2^(attempt-1))`.
pub fn backoff(attempt: u32, cap: Duration, seed: u64) -> Duration {
    let base = Duration::from_millis(200).saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let d = base.min(cap);
    let half = d / 2;
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    let span = u64::try_from(half.as_micros()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_micros(x % span)
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
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111", "::ffff:1.1.1.1"] {
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
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(5);
        let b1 = backoff(1, cap, 1);
        assert!(b1 >= Duration::from_millis(100) && b1 <= Duration::from_millis(200));
        let b10 = backoff(10, cap, 7);
        assert!(b10 >= Duration::from_millis(2500) && b10 <= cap);
    }

    #[test]
    fn message_ids_are_stable() {
        assert_eq!(message_id("s", &["a", "b"]), message_id("s", &["a", "b"]));
        assert_ne!(message_id("s", &["a", "b"]), message_id("s", &["a", "c"]));
        assert_ne!(message_id("s", &["a"]), message_id("t", &["a"]));
    }

    #[test]
    fn secrets() {
        assert_eq!(decode_secret("whsec_AAEC").unwrap(), vec![0, 1, 2]);
        assert!(decode_secret("short").is_err());
        assert!(decode_secret("whsec_!!").is_err());
    }
}
