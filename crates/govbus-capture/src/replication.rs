//! A PostgreSQL logical replication connection: the streaming replication
//! protocol (`replication=database`, `START_REPLICATION … LOGICAL`, CopyBoth)
//! written over `postgres-protocol`'s message encoders, because
//! `tokio-postgres` has no CopyBoth (ARCHITECTURE.md, "Change capture").
//!
//! It does only what the capture needs: connect and authenticate (trust,
//! password, MD5, SCRAM-SHA-256; no TLS), run a replication command and
//! read its text rows, start streaming, and then read `XLogData` and
//! keepalives and send standby status updates. Every frame is
//! length-checked; nothing the server sends can panic it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::Host;

/// Why the replication connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The socket failed or closed.
    #[error("replication connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered with an error.
    #[error(
        "PostgreSQL (replication connection): {severity} {code}: {message}{}",
        hint(code)
    )]
    Server {
        /// ERROR, FATAL, PANIC.
        severity: String,
        /// SQLSTATE.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server sent something the protocol does not allow here.
    #[error("replication protocol: {0}")]
    Protocol(String),
    /// The connection string cannot be used for a replication connection.
    #[error("replication connection: {0}")]
    Config(String),
}

impl ReplicationError {
    /// Whether reconnecting can help: a lost connection or a server that is
    /// starting or shutting down can; a refused privilege or a bad
    /// configuration cannot.
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicationError::Io(_) => true,
            // Only what a later attempt can fix by itself: a lost or refused
            // connection (08), too many connections or wal senders (53), a
            // server shutting down or starting (57P), a slot still held by a
            // dying predecessor (55006), a serialization failure (40), an I/O
            // failure (58). Anything else — a privilege, a missing
            // database, an invalidated slot — needs a person.
            ReplicationError::Server { code, .. } => {
                ["08", "53", "57P", "40", "58"]
                    .iter()
                    .any(|p| code.starts_with(p))
                    || code == "55006"
            }
            ReplicationError::Protocol(_) | ReplicationError::Config(_) => false,
        }
    }
}

/// What the stream delivered.
#[derive(Debug)]
pub enum Event {
    /// A pgoutput message starting at WAL position `start`.
    XLogData {
        /// The WAL position of the change (the version a change gets).
        start: u64,
        /// The message.
        data: Bytes,
    },
    /// The server's heartbeat: everything before `end` has been sent.
    Keepalive {
        /// The server's sent position.
        end: u64,
        /// The server asks for a status update now.
        reply: bool,
    },
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One replication connection.
pub struct Replication {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication").finish_non_exhaustive()
    }
}

/// A frame: tag and body.
struct Frame {
    tag: u8,
    body: Bytes,
}

/// Frames larger than this are refused (a pgoutput message carries one row;
/// a row is at most 1 GiB in PostgreSQL, far beyond what a capture maps).
const MAX_FRAME: usize = 256 << 20;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

impl Replication {
    /// Connects with the libpq connection string `conninfo` as a logical
    /// replication connection to its database.
    pub async fn connect(conninfo: &str) -> Result<Replication, ReplicationError> {
        let config: tokio_postgres::Config = conninfo
            .parse()
            .map_err(|e| ReplicationError::Config(format!("conninfo: {e}")))?;
        let user = config.get_user().ok_or_else(|| {
            ReplicationError::Config("conninfo names no user (add `user=…`)".into())
        })?;
        let dbname = config.get_dbname().unwrap_or(user);
        let ports = config.get_ports();
        let timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(10));
        let mut last = None;
        for (i, host) in config.get_hosts().iter().enumerate() {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            let io: std::io::Result<Box<dyn Io>> = tokio::time::timeout(timeout, async {
                Ok(match host {
                    Host::Tcp(h) => {
                        let s = tokio::net::TcpStream::connect((h.as_str(), port)).await?;
                        s.set_nodelay(true)?;
                        Box::new(s) as Box<dyn Io>
                    }
                    #[cfg(unix)]
                    Host::Unix(dir) => Box::new(
                        tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}")))
                            .await?,
                    ),
                })
            })
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))
            });
            match io {
                Ok(io) => {
                    let mut r = Replication {
                        io,
                        rbuf: BytesMut::with_capacity(64 << 10),
                        wbuf: BytesMut::with_capacity(1024),
                    };
                    let app = config.get_application_name().unwrap_or("govbus-capture");
                    // A server (or pooler) that accepts and never answers
                    // must not hold the capture forever.
                    tokio::time::timeout(
                        timeout,
                        r.startup(user, dbname, app, config.get_password()),
                    )
                    .await
                    .map_err(|_| {
                        ReplicationError::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no answer to the replication connection's startup",
                        ))
                    })??;
                    return Ok(r);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(
            || ReplicationError::Config("conninfo names no host (add `host=…`)".into()),
            ReplicationError::Io,
        ))
    }

    async fn startup(
        &mut self,
        user: &str,
        dbname: &str,
        application: &str,
        password: Option<&[u8]>,
    ) -> Result<(), ReplicationError> {
        frontend::startup_message(
            [
                ("user", user),
                ("database", dbname),
                ("replication", "database"),
                ("application_name", application),
                ("client_encoding", "UTF8"),
            ],
            &mut self.wbuf,
        )?;
        self.send().await?;
        let need_password = || {
            ReplicationError::Config(
                "the server asks for a password and conninfo has none (add `password=…`)".into(),
            )
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let f = self.frame().await?;
            match f.tag {
                b'R' => {
                    let mut b = f.body;
                    let code = get_i32(&mut b)?;
                    match code {
                        0 => {}
                        3 => {
                            let p = password.ok_or_else(need_password)?;
                            frontend::password_message(p, &mut self.wbuf)?;
                            self.send().await?;
                        }
                        5 => {
                            let p = password.ok_or_else(need_password)?;
                            if b.len() < 4 {
                                return Err(proto("short MD5 salt"));
                            }
                            let salt = [b[0], b[1], b[2], b[3]];
                            let hash = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                p,
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                            self.send().await?;
                        }
                        10 => {
                            let p = password.ok_or_else(need_password)?;
                            let offered = b
                                .split(|&c| c == 0)
                                .any(|m| m == SCRAM_SHA_256.as_bytes());
                            if !offered {
                                return Err(ReplicationError::Config(
                                    "the server offers no SASL mechanism this client has (SCRAM-SHA-256 without channel binding)".into(),
                                ));
                            }
                            let s = ScramSha256::new(p, ChannelBinding::unsupported());
                            frontend::sasl_initial_response(
                                SCRAM_SHA_256,
                                s.message(),
                                &mut self.wbuf,
                            )?;
                            scram = Some(s);
                            self.send().await?;
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| proto("SASL continue before SASL"))?;
                            s.update(&b)?;
                            frontend::sasl_response(s.message(), &mut self.wbuf)?;
                            self.send().await?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| proto("SASL final before SASL"))?;
                            s.finish(&b)?;
                        }
                        other => {
                            return Err(ReplicationError::Config(format!(
                                "the server asks for an authentication method this client does not have (code {other}); use trust, password, md5 or scram-sha-256 in pg_hba.conf"
                            )))
                        }
                    }
                }
                b'Z' => return Ok(()),
                b'S' | b'K' | b'N' => {}
                b'E' => return Err(server_error(f.body)),
                t => {
                    return Err(proto(&format!(
                        "unexpected message `{}` during startup",
                        t as char
                    )))
                }
            }
        }
    }

    /// Runs a replication command and returns its rows (text columns).
    pub async fn command(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        frontend::query(sql, &mut self.wbuf)?;
        self.send().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let f = self.frame().await?;
            match f.tag {
                b'D' => rows.push(data_row(f.body)?),
                b'E' => error = Some(server_error(f.body)),
                b'Z' => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    }
                }
                // Row description, command complete, notices, parameter status.
                b'T' | b'C' | b'N' | b'S' | b'I' => {}
                t => {
                    return Err(proto(&format!(
                        "unexpected message `{}` after a command",
                        t as char
                    )))
                }
            }
        }
    }

    /// Starts streaming the slot's changes from `lsn` with pgoutput
    /// (protocol 1, logical messages on) for `publication`.
    pub async fn start(
        &mut self,
        slot: &str,
        lsn: u64,
        publication: &str,
    ) -> Result<(), ReplicationError> {
        let sql = format!(
            "START_REPLICATION SLOT \"{slot}\" LOGICAL {} (\"proto_version\" '1', \"publication_names\" '\"{publication}\"', \"messages\" 'true')",
            crate::format_lsn(lsn)
        );
        frontend::query(&sql, &mut self.wbuf)?;
        self.send().await?;
        loop {
            let f = self.frame().await?;
            match f.tag {
                b'W' => return Ok(()),
                b'N' | b'S' => {}
                b'E' => {
                    let e = server_error(f.body);
                    // Read up to ReadyForQuery so that the error is the whole story.
                    return Err(e);
                }
                t => {
                    return Err(proto(&format!(
                        "unexpected message `{}` after START_REPLICATION",
                        t as char
                    )))
                }
            }
        }
    }

    /// The next event of a started stream. Cancel-safe: what was read
    /// stays in the buffer for the next call.
    pub async fn recv(&mut self) -> Result<Event, ReplicationError> {
        loop {
            let f = self.frame().await?;
            match f.tag {
                b'd' => {
                    let mut b = f.body;
                    if b.is_empty() {
                        return Err(proto("empty CopyData"));
                    }
                    match b.get_u8() {
                        b'w' => {
                            if b.len() < 24 {
                                return Err(proto("short XLogData header"));
                            }
                            let start = b.get_u64();
                            let _end = b.get_u64();
                            let _time = b.get_i64();
                            return Ok(Event::XLogData { start, data: b });
                        }
                        b'k' => {
                            if b.len() < 17 {
                                return Err(proto("short keepalive"));
                            }
                            let end = b.get_u64();
                            let _time = b.get_i64();
                            let reply = b.get_u8() == 1;
                            return Ok(Event::Keepalive { end, reply });
                        }
                        t => {
                            return Err(proto(&format!("unknown CopyData message `{}`", t as char)))
                        }
                    }
                }
                b'N' | b'S' => {}
                b'E' => return Err(server_error(f.body)),
                // CopyDone; or CommandComplete (`COPY 0`) without a CopyDone
                // first, which is how a walsender ends the stream when the
                // server shuts down (PostgreSQL's `WalSndDone`): a restart,
                // not a broken protocol — reconnect.
                b'c' | b'C' => {
                    return Err(ReplicationError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the server ended the replication stream (is it shutting down?)",
                    )))
                }
                t => {
                    return Err(proto(&format!(
                        "unexpected message `{}` while streaming",
                        t as char
                    )))
                }
            }
        }
    }

    /// Whether a whole frame is already buffered (more of the stream is in
    /// hand without waiting).
    pub fn has_buffered(&self) -> bool {
        self.rbuf.len() >= 5 && {
            let len = u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
            self.rbuf.len() > len as usize
        }
    }

    /// Tells the server that everything before `lsn` is written, flushed and
    /// applied: the slot may move to it.
    pub async fn status(&mut self, lsn: u64) -> Result<(), ReplicationError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        self.wbuf.put_u8(b'd');
        self.wbuf.put_i32(4 + 1 + 8 * 4 + 1);
        self.wbuf.put_u8(b'r');
        self.wbuf.put_u64(lsn);
        self.wbuf.put_u64(lsn);
        self.wbuf.put_u64(lsn);
        self.wbuf.put_i64(now - PG_EPOCH_MICROS);
        self.wbuf.put_u8(0);
        self.send().await
    }

    async fn send(&mut self) -> Result<(), ReplicationError> {
        self.io.write_all(&self.wbuf).await?;
        self.io.flush().await?;
        self.wbuf.clear();
        Ok(())
    }

    async fn frame(&mut self) -> Result<Frame, ReplicationError> {
        loop {
            if self.rbuf.len() >= 5 {
                let len =
                    u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]])
                        as usize;
                if !(4..=MAX_FRAME).contains(&len) {
                    return Err(proto(&format!("frame length {len}")));
                }
                if self.rbuf.len() > len {
                    let tag = self.rbuf[0];
                    let mut whole = self.rbuf.split_to(len + 1);
                    whole.advance(5);
                    return Ok(Frame {
                        tag,
                        body: whole.freeze(),
                    });
                }
                self.rbuf.reserve(len + 1 - self.rbuf.len());
            }
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ReplicationError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the replication connection",
                )));
            }
        }
    }
}

/// What to change, for the errors a department's first setup meets.
fn hint(code: &str) -> &'static str {
    match code {
        "42501" => " — the capture's role needs the REPLICATION attribute: ALTER ROLE <role> REPLICATION",
        "28000" => " — pg_hba.conf has no entry letting this role connect to this database from here (a logical replication connection matches the database name)",
        "28P01" => " — wrong password in conninfo",
        "53300" => " — all replication connections are in use: raise max_wal_senders (restart) or stop an unused consumer",
        "55000" => " — check wal_level = logical and max_replication_slots on the database",
        _ => "",
    }
}

fn proto(what: &str) -> ReplicationError {
    ReplicationError::Protocol(what.to_owned())
}

fn get_i32(b: &mut Bytes) -> Result<i32, ReplicationError> {
    if b.len() < 4 {
        return Err(proto("short message"));
    }
    Ok(b.get_i32())
}

/// An ErrorResponse's fields.
fn server_error(body: Bytes) -> ReplicationError {
    let (mut severity, mut code, mut message) = (String::new(), String::new(), String::new());
    let mut rest = &body[..];
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|&c| c == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match kind {
            b'S' => severity = value,
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    ReplicationError::Server {
        severity,
        code,
        message,
    }
}

/// A DataRow's columns as text.
fn data_row(mut b: Bytes) -> Result<Vec<Option<String>>, ReplicationError> {
    if b.len() < 2 {
        return Err(proto("short DataRow"));
    }
    let n = b.get_i16();
    let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n {
        let len = get_i32(&mut b)?;
        if len < 0 {
            out.push(None);
            continue;
        }
        let len = len as usize;
        if b.len() < len {
            return Err(proto("short DataRow column"));
        }
        let v = b.split_to(len);
        out.push(Some(String::from_utf8_lossy(&v).into_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_are_read_field_by_field_and_truncation_is_harmless() {
        let body =
            Bytes::from_static(b"SERROR\0C42501\0Mmust be superuser or replication role\0\0");
        match server_error(body) {
            ReplicationError::Server { code, message, .. } => {
                assert_eq!(code, "42501");
                assert!(message.contains("replication role"));
            }
            e => panic!("{e}"),
        }
        assert!(matches!(
            server_error(Bytes::from_static(b"SERR")),
            ReplicationError::Server { .. }
        ));
    }

    #[test]
    fn data_rows_refuse_columns_longer_than_the_frame() {
        let mut b = BytesMut::new();
        b.put_i16(2);
        b.put_i32(3);
        b.put_slice(b"abc");
        b.put_i32(-1);
        assert_eq!(
            data_row(b.freeze()).ok(),
            Some(vec![Some("abc".to_owned()), None])
        );
        let mut b = BytesMut::new();
        b.put_i16(1);
        b.put_i32(99);
        b.put_slice(b"abc");
        assert!(data_row(b.freeze()).is_err());
    }

    #[test]
    fn privilege_and_authentication_errors_are_not_retried() {
        let e = |code: &str| ReplicationError::Server {
            severity: "FATAL".into(),
            code: code.into(),
            message: String::new(),
        };
        assert!(!e("42501").is_transient());
        assert!(!e("28P01").is_transient());
        assert!(e("57P01").is_transient());
        assert!(e("55006").is_transient());
        assert!(e("53300").is_transient());
        assert!(
            !e("55000").is_transient(),
            "an invalidated slot needs a person"
        );
        assert!(!e("3D000").is_transient(), "so does a missing database");
    }
}
