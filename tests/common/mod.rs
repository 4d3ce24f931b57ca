//! Helpers shared by the end-to-end test binaries.
#![allow(dead_code)]

pub mod own_postgres;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use govbus_kafka::topics::Topics;
use std::sync::OnceLock;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the binary once (a no-op when `cargo test` already built it) and returns its path.
pub fn govbus_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("GOVBUS_BIN") {
            return PathBuf::from(p);
        }
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "govbus", "--bin", "govbus"])
            .current_dir(repo())
            .status()
            .unwrap_or_else(|e| panic!("run cargo build: {e}"));
        assert!(status.success(), "cargo build -p govbus failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| repo().join("target"), PathBuf::from);
        target.join("debug/govbus")
    })
}

/// A new gateway token for `department` from `govbus credential new`, and a
/// credentials file in `dir` holding its entry (only the hash).
pub fn new_credential(department: &str, dir: &Path) -> (String, PathBuf) {
    let out = Command::new(govbus_bin())
        .args(["credential", "new", "--department", department])
        .output()
        .unwrap_or_else(|e| panic!("run govbus credential new: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let token = text
        .lines()
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_default()
        .to_owned();
    let entry = text.split_once("\n\n").map(|(_, e)| e).unwrap_or_default();
    assert!(
        !token.is_empty() && !entry.contains(&token),
        "the credentials entry holds only the hash:\n{text}"
    );
    let path = dir.join("credentials.toml");
    std::fs::write(&path, entry).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    (token, path)
}

/// Starts `govbus ARGS` (quiet; killed with the test process).
pub fn spawn(args: &[&str]) -> Child {
    let mut cmd = Command::new(govbus_bin());
    cmd.args(args)
        .env("GOVBUS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    govbus_testkit::spawn(cmd).unwrap_or_else(|e| panic!("start govbus {args:?}: {e}"))
}

/// A running `govbus up`, with where each component listens — read from the
/// lines it prints once started, so configs can use port 0 and no test races
/// another process for a port.
pub struct Up {
    pub child: Child,
    ports: std::collections::HashMap<String, u16>,
}

impl Up {
    /// `govbus up --config CONFIG`; waits (60 s at most) until it is up.
    pub fn start(config: &Path) -> Up {
        use std::io::BufRead;
        let mut cmd = Command::new(govbus_bin());
        cmd.args(["up", "--config"])
            .arg(config)
            .env("GOVBUS_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child =
            govbus_testkit::spawn(cmd).unwrap_or_else(|e| panic!("start govbus up: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        // Drains stderr for the process's whole life (a full pipe would block it).
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let started = Instant::now();
        let mut log = Vec::new();
        let mut ports = std::collections::HashMap::new();
        while !ports.contains_key("metrics") {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if let Some((name, port)) = listening(&line) {
                        ports.insert(name, port);
                    }
                    log.push(line);
                }
                Err(_) => {
                    let exited = child.try_wait().ok().flatten();
                    assert!(
                        exited.is_none() && started.elapsed() < Duration::from_secs(60),
                        "govbus up is not up ({}):\n{}",
                        exited.map_or_else(|| "60 s".to_owned(), |s| s.to_string()),
                        log.join("\n")
                    );
                }
            }
        }
        Up { child, ports }
    }

    /// Where `component` (`metrics`, `gateway`, `registry`, `sink`) listens.
    pub fn port(&self, component: &str) -> u16 {
        *self
            .ports
            .get(component)
            .unwrap_or_else(|| panic!("govbus up printed no address for {component}"))
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `  gateway   http://127.0.0.1:4321 …` → ("gateway", 4321).
fn listening(line: &str) -> Option<(String, u16)> {
    let (name, rest) = line.trim_start().split_once(' ')?;
    let addr = rest.trim_start().strip_prefix("http://")?;
    let port = addr
        .split(['/', ' '])
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()?;
    Some((name.to_owned(), port))
}

/// Starts a router on `bootstrap` in `topics`' namespace with its own group
/// and fast group joins, plus `extra` arguments.
pub fn spawn_router(bootstrap: &str, topics: &Topics, extra: &[&str]) -> Child {
    let group = govbus_testkit::unique("router");
    let mut args = vec![
        "router",
        "--bootstrap",
        bootstrap,
        "--topic-prefix",
        topics.prefix(),
        "--group",
        &group,
    ];
    args.extend([
        "--listen",
        "127.0.0.1:0",
        "--kafka",
        "session.timeout.ms=6000",
    ]);
    args.extend(extra);
    spawn(&args)
}

/// Starts a gateway on `bootstrap` in `topics`' namespace, listening on
/// loopback `port` with the credentials file `creds`, plus `extra`
/// arguments (e.g. `--catalog DIR`). The caller waits for it to listen.
pub fn spawn_gateway(
    bootstrap: &str,
    topics: &Topics,
    creds: &std::path::Path,
    port: u16,
    extra: &[&str],
) -> Child {
    let listen = format!("127.0.0.1:{port}");
    let creds = creds.to_str().unwrap_or_default();
    let mut args = vec![
        "gateway",
        "--bootstrap",
        bootstrap,
        "--credentials",
        creds,
        "--listen",
        &listen,
        "--topic-prefix",
        topics.prefix(),
    ];
    args.extend(extra);
    spawn(&args)
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Waits (20 s at most) until something listens on `port`.
pub fn wait_listening(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing listens on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET path` over HTTP/1.0 on loopback: the whole response, headers included.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap_or_else(|e| panic!("{e}"));
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap_or_else(|e| panic!("{e}"));
    out
}

/// Every record of `topic` on the shared broker, once at least `distinct`
/// different `ce_id`s are there (or after two minutes: the caller's
/// assertions then say what is missing).
pub fn records_with_ids(topic: &str, distinct: usize) -> Vec<govbus_kafka::read::Record> {
    let start = Instant::now();
    loop {
        let recs = govbus_kafka::read::read_all(
            &govbus_testkit::Broker::shared().bootstrap(),
            topic,
            Duration::from_secs(1),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("read {topic}: {e}"));
        let ids: std::collections::BTreeSet<&str> = recs
            .iter()
            .map(|r| r.header(govbus_kafka::headers::CE_ID))
            .collect();
        if ids.len() >= distinct || start.elapsed() > Duration::from_secs(120) {
            return recs;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// (key, op, source version, id) of `topic`'s records, once `distinct`
/// different ids are there: what a change capture test compares.
pub fn changes(topic: &str, distinct: usize) -> Vec<(String, String, u64, String)> {
    use govbus_kafka::headers as h;
    records_with_ids(topic, distinct)
        .iter()
        .map(|r| {
            (
                r.header(h::CE_SUBJECT).to_owned(),
                r.header(h::CE_OP).to_owned(),
                r.header(h::CE_SOURCEVERSION).parse().unwrap_or(0),
                r.header(h::CE_ID).to_owned(),
            )
        })
        .collect()
}

/// Prints every `*.log` in `dir` (a failing test's child processes' logs).
pub fn print_logs(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().extension().is_some_and(|x| x == "log") {
            eprintln!(
                "--- {}\n{}",
                e.path().display(),
                std::fs::read_to_string(e.path()).unwrap_or_default()
            );
        }
    }
}

/// `govbus capture <kind> --config <dir>/capture.toml` on the shared broker
/// under `topics`, serving /metrics on `port`, logging to a new
/// `capture-*.log` in `dir` (printed by [`print_logs`] when a test fails).
pub fn spawn_capture(
    kind: &str,
    dir: &Path,
    topics: &govbus_kafka::topics::Topics,
    port: u16,
) -> std::process::Child {
    let mut c = capture_command(kind, dir, topics, port);
    c.env("GOVBUS_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::File::create(dir.join(format!("capture-{}.log", govbus_testkit::unique("l"))))
                .unwrap_or_else(|e| panic!("capture log: {e}")),
        );
    govbus_testkit::spawn(c).unwrap_or_else(|e| panic!("spawn capture: {e}"))
}

/// Runs a capture that is expected to refuse to start: its exit status and
/// what it printed on stderr.
pub fn capture_refusal(
    kind: &str,
    dir: &Path,
    topics: &govbus_kafka::topics::Topics,
) -> (std::process::ExitStatus, String) {
    let out = capture_command(kind, dir, topics, free_port())
        .env("GOVBUS_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("run capture: {e}"));
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn capture_command(
    kind: &str,
    dir: &Path,
    topics: &govbus_kafka::topics::Topics,
    port: u16,
) -> std::process::Command {
    let mut c = std::process::Command::new(govbus_bin());
    c.args(["capture", kind, "--config"])
        .arg(dir.join("capture.toml"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--bootstrap", &govbus_testkit::Broker::shared().bootstrap()])
        .args(["--topic-prefix", topics.prefix()]);
    c
}

/// Holds the machine's MariaDB for one test across the test binaries (the
/// MySQL capture tests restart the server; the demo writes to it): an
/// exclusive `flock` on a file in the temporary directory, released when
/// the guard drops.
#[allow(dead_code)]
pub struct MariadbLock(std::fs::File);

#[allow(dead_code)]
#[allow(unsafe_code)]
pub fn mariadb_exclusive() -> MariadbLock {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("govbus-test-mariadb.lock"))
        .unwrap();
    // SAFETY: flock on a descriptor this function owns; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    MariadbLock(file)
}

/// Every line of the closed `.jsonl` files in `dir` (a file sink's output),
/// parsed; none when `dir` does not exist yet.
pub fn jsonl_events(dir: &Path) -> Vec<serde_json::Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .flat_map(|p| {
            std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
                .lines()
                .map(|l| {
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", p.display()))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The Standard Webhooks secret the test receivers verify with (the sink
/// reads it from `GOVBUS_TEST_WEBHOOK_SECRET`).
pub const WEBHOOK_SECRET: &str = "whsec_c2VjcmV0LWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OQ==";

/// A Standard Webhooks receiver (Python) answering per `script`.
pub struct Receiver {
    port: u16,
    log: PathBuf,
    _child: Child,
}

impl Receiver {
    pub fn start(dir: &Path, name: &str, script: &str) -> Receiver {
        let port = free_port();
        let log = dir.join(format!("{name}.jsonl"));
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("tests/python/webhook_receiver.py"))
            .args([
                &port.to_string(),
                WEBHOOK_SECRET,
                log.to_str().unwrap(),
                script,
            ])
            .stdout(Stdio::null());
        let child = govbus_testkit::spawn(cmd).unwrap();
        wait_listening(port);
        Receiver {
            port,
            log,
            _child: child,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/deaths", self.port)
    }

    pub fn requests(&self) -> Vec<serde_json::Value> {
        json_lines(&self.log)
    }

    /// Event ids the receiver accepted (answered 2xx with a valid signature).
    pub fn accepted(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| {
                r["verified"] == serde_json::json!(true) && r["answer"] == serde_json::json!("200")
            })
            .flat_map(|r| r["events"].as_array().unwrap().clone())
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// An OTLP/HTTP trace receiver (Python, the OpenTelemetry project's own
/// protobuf classes): every exported span, one JSON value a line.
pub struct Otlp {
    port: u16,
    log: PathBuf,
    _child: Child,
}

impl Otlp {
    pub fn start(dir: &Path) -> Otlp {
        let port = free_port();
        let log = dir.join("spans.jsonl");
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("tests/python/otlp_receiver.py"))
            .args([&port.to_string(), log.to_str().unwrap()])
            .stdout(Stdio::null());
        let child = govbus_testkit::spawn(cmd).unwrap();
        wait_listening(port);
        Otlp {
            port,
            log,
            _child: child,
        }
    }

    /// Sets a govbus command's OTLP endpoint to this receiver, with a
    /// short export delay.
    pub fn export_to(&self, cmd: &mut Command) {
        cmd.env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", self.port),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<serde_json::Value> {
        json_lines(&self.log)
    }
}

/// The complete lines of a JSON-lines log that a receiver process appends
/// to while the test reads it: a last line without its newline is still
/// being written, and is left for the next read (a suite run once read one
/// cut at 5,874 characters and failed to parse it).
fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
