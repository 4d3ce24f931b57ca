//! A real Tansu broker for tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::spawn::spawn;

/// Where the broker keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Tansu's `memory://` engine: fast, lost when the broker stops.
    Memory,
    /// Tansu's `s3://` engine against a local S3-compatible server (moto),
    /// started alongside: the data outlives broker restarts.
    Durable,
    /// Tansu's `sqlite://` (libSQL) engine on a file in a temporary
    /// directory (the test command installs Tansu with `--features libsql`),
    /// with one index added (see `index_headers`).
    Sqlite,
}

/// A running Tansu broker (or the suite-wide one named by `GOVBUS_TEST_BOOTSTRAP`).
#[derive(Debug)]
pub struct Broker {
    port: u16,
    storage: Storage,
    child: Option<Child>,
    /// The S3 server and its port, for [`Storage::Durable`].
    s3: Option<(Child, u16)>,
    /// The database file's directory, for [`Storage::Sqlite`].
    db: Option<PathBuf>,
    /// The port clients are told to connect to, when not the broker's own
    /// (a proxy in front of it: [`Broker::start_behind`]).
    advertised: Option<u16>,
    external: bool,
}

/// The `tansu` binary: `$TANSU_BIN`, `tansu` on `PATH`, or `~/.cargo/bin/tansu`.
pub fn tansu_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return Ok(PathBuf::from(p));
    }
    let candidates = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("tansu"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/tansu")));
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
    }
    bail!("no tansu broker found: run scripts/test (it installs tansu 0.6.0), or set TANSU_BIN")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(port: u16, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status} before listening on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} did not listen on port {port} within 20 s")
}

impl Broker {
    /// One broker for the whole test process (memory storage), or the
    /// suite-wide broker at `GOVBUS_TEST_BOOTSTRAP`. Tests sharing it use
    /// [`crate::unique`] topic and group names.
    pub fn shared() -> &'static Broker {
        static SHARED: OnceLock<Broker> = OnceLock::new();
        SHARED.get_or_init(|| {
            if let Some(port) = std::env::var("GOVBUS_TEST_BOOTSTRAP")
                .ok()
                .and_then(|b| b.rsplit(':').next().and_then(|p| p.parse().ok()))
            {
                return Broker {
                    port,
                    storage: Storage::Memory,
                    child: None,
                    s3: None,
                    db: None,
                    advertised: None,
                    external: true,
                };
            }
            Broker::start(Storage::Memory).unwrap_or_else(|e| panic!("test broker: {e:#}"))
        })
    }

    /// Starts a private broker on a free loopback port.
    pub fn start(storage: Storage) -> anyhow::Result<Broker> {
        Broker::start_advertising(storage, None)
    }

    /// Starts a private broker that tells its clients to connect to
    /// `proxy_port` (a [`crate::ProduceStall`] in front of it) instead of
    /// its own port, so that every connection after the bootstrap goes
    /// through the proxy too.
    pub fn start_behind(storage: Storage, proxy_port: u16) -> anyhow::Result<Broker> {
        Broker::start_advertising(storage, Some(proxy_port))
    }

    /// The broker's own port (not the one it advertises).
    pub fn port(&self) -> u16 {
        self.port
    }

    fn start_advertising(storage: Storage, advertised: Option<u16>) -> anyhow::Result<Broker> {
        let s3 = match storage {
            Storage::Memory | Storage::Sqlite => None,
            Storage::Durable => Some(start_s3()?),
        };
        let db = match storage {
            Storage::Sqlite => {
                let dir = std::env::temp_dir().join(crate::unique("tansu-db"));
                std::fs::create_dir_all(&dir)?;
                Some(dir)
            }
            _ => None,
        };
        let mut broker = Broker {
            port: 0,
            storage,
            child: None,
            s3,
            db,
            advertised,
            external: false,
        };
        let mut last = None;
        for _ in 0..3 {
            broker.port = free_port()?;
            match broker.launch() {
                Ok(()) => {
                    if let Some(dir) = &broker.db {
                        index_headers(&dir.join("tansu.db"))?;
                    }
                    return Ok(broker);
                }
                // Another process may have taken the port between probe and bind.
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("broker did not start")))
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised.unwrap_or(self.port));
        let mut cmd = Command::new(tansu_binary()?);
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
        ])
        .args(["--cluster-id", "govbus-test"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // GOVBUS_TEST_LOG_DIR keeps the broker's log (RUST_LOG, default warn).
        if let Some(dir) = std::env::var_os("GOVBUS_TEST_LOG_DIR") {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(Path::new(&dir).join(format!("tansu-{}.log", self.port)))?;
            cmd.env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stderr(log.try_clone()?)
            .stdout(log);
        }
        match (&self.s3, &self.db) {
            (None, Some(dir)) => {
                // Tansu reads the URL's path as relative: run it in the directory.
                cmd.args(["--storage-engine", "sqlite://tansu.db"])
                    .current_dir(dir);
            }
            (None, None) => {
                cmd.args(["--storage-engine", "memory://tansu/"]);
            }
            (Some((_, s3_port)), _) => {
                cmd.args(["--storage-engine", "s3://tansu/"])
                    .env("AWS_ACCESS_KEY_ID", "test")
                    .env("AWS_SECRET_ACCESS_KEY", "test")
                    .env("AWS_DEFAULT_REGION", "us-east-1")
                    .env("AWS_ENDPOINT", format!("http://127.0.0.1:{s3_port}"))
                    .env("AWS_ALLOW_HTTP", "true");
            }
        }
        let mut child = spawn(cmd).context("start tansu")?;
        if let Err(e) = wait_listening(self.port, &mut child, "tansu") {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        self.child = Some(child);
        Ok(())
    }

    /// `127.0.0.1:<port>`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The storage engine in use.
    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// Kills the broker (SIGKILL) without restarting it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if self.external {
            bail!("the suite-wide broker cannot be killed by a test; use Broker::start");
        }
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Kills the broker and starts it again on the same port and storage.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        for child in [self.child.as_mut(), self.s3.as_mut().map(|(c, _)| c)]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.db {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Adds the index Tansu 0.6.0's libSQL schema lacks: its `header` table has
/// none, and every fetched record looks its headers up by (partition,
/// offset), so each fetch scanned every header ever stored — quadratic in
/// the data kept. A consumer with a backlog (after a broker restart) then
/// held the single storage task for minutes and every other request (group
/// heartbeats, metadata) timed out behind it. With the index it drains in
/// seconds. Done once, on the idle broker, through Python's `sqlite3`.
fn index_headers(db: &Path) -> anyhow::Result<()> {
    let python = std::env::var("GOVBUS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], timeout=30)\n\
             c.execute('create index if not exists header_by_record on header (topition, offset_id)')\n\
             c.commit()",
        ])
        .arg(db)
        .output()
        .context("run python3 to index the broker's database")?;
    if !out.status.success() {
        bail!(
            "indexing {}: {}",
            db.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Starts moto's S3 server on a free port and creates the `tansu` bucket.
fn start_s3() -> anyhow::Result<(Child, u16)> {
    let port = free_port()?;
    let python = std::env::var("GOVBUS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut cmd = Command::new(python);
    cmd.args([
        "-m",
        "moto.server",
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut child = spawn(cmd).context("start moto S3 server (pip install 'moto[server]')")?;
    if let Err(e) = wait_listening(port, &mut child, "moto S3 server") {
        let _ = child.kill();
        return Err(e.context("is moto installed? scripts/test installs it"));
    }
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    write!(stream, "PUT /tansu HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if !response.starts_with("HTTP/1.1 200") {
        bail!(
            "creating the S3 bucket failed: {}",
            response.lines().next().unwrap_or("")
        );
    }
    Ok((child, port))
}
