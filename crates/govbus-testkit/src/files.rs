//! File helpers for tests that break a copy of the catalog on purpose.

use std::path::Path;

/// Copies the directory tree `from` into `to` (created if needed).
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        let Some(name) = path.file_name() else {
            continue;
        };
        let target = to.join(name);
        if path.is_dir() {
            copy_dir(&path, &target)?;
        } else {
            std::fs::copy(&path, &target)?;
        }
    }
    Ok(())
}

/// Replaces the first `from` in the file with `to`; an error if `from` is absent,
/// so that an edit that silently stopped applying fails its test.
pub fn replace_in_file(path: &Path, from: &str, to: &str) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    if !text.contains(from) {
        return Err(std::io::Error::other(format!(
            "{} does not contain {from:?}",
            path.display()
        )));
    }
    std::fs::write(path, text.replacen(from, to, 1))
}
