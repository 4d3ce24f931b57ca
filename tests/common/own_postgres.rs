//! A PostgreSQL server of the test's own: `initdb` in the test's directory,
//! its own port and socket directory. The machine's server is shared by
//! every test, so a test that restarts or crashes the database uses one of
//! these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct OwnPostgres {
    dir: PathBuf,
    port: u16,
    settings: Vec<String>,
}

impl OwnPostgres {
    fn bin(tool: &str) -> PathBuf {
        let versions = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries under /usr/lib/postgresql");
        let mut v: Vec<PathBuf> = versions.flatten().map(|e| e.path()).collect();
        v.sort();
        v.last().unwrap().join("bin").join(tool)
    }

    /// `pg_ctl`/`initdb` as the `postgres` user (they refuse to run as root).
    fn as_postgres(tool: &str, args: &[&str]) {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Self::bin(tool))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A new server below `parent` with these `-c` settings (`wal_level=logical`).
    pub fn start(parent: &Path, settings: &[&str]) -> OwnPostgres {
        let dir = parent.join("pg");
        std::fs::create_dir_all(&dir).unwrap();
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(parent)
            .status()
            .unwrap();
        let d = dir.to_str().unwrap();
        Self::as_postgres(
            "initdb",
            &[
                "-D",
                d,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let pg = OwnPostgres {
            dir,
            port: super::free_port(),
            settings: settings.iter().map(|s| (*s).to_owned()).collect(),
        };
        pg.pg_ctl("start", "fast");
        pg
    }

    /// `pg_ctl ACTION` with shutdown `mode` (`immediate`: a crash; `fast`: an
    /// operator's restart).
    pub fn pg_ctl(&self, action: &str, mode: &str) {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        for s in &self.settings {
            opts.push_str(&format!(" -c {s}"));
        }
        let log = self.dir.join("server.log");
        let d = self.dir.to_str().unwrap();
        Self::as_postgres(
            "pg_ctl",
            &[
                "-D",
                d,
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-m",
                mode,
                "-w",
                "-t",
                "60",
                action,
            ],
        );
    }

    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let d = self.dir.to_str().unwrap_or_default().to_owned();
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Self::bin("pg_ctl"))
            .args(["-D", &d, "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
