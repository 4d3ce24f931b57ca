//! Helpers shared by the end-to-end test binaries.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
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
