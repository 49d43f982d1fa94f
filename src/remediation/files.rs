//! Files on disk for remediations: content hashes, atomic writes (temporary file, fsync,
//! rename, fsync of the directory) that keep the file's mode, and timestamped backups (sealed
//! by the caller) in the data directory.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes `bytes` to `path` atomically: a temporary file beside it (same mode as the file it
/// replaces, else 0600), fsync, rename over, fsync the directory. A crash leaves either the old
/// file or the new one, never half of one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o600);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let tmp = dir.join(format!(
        ".{name}.mcp-coordinator-{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` (the sealed copy of `original`) into `backups_dir` (0700) as
/// `<timestamp>-<n>-<file name>.sealed` (0600) and returns its path.
pub fn write_backup(
    bytes: &[u8],
    original: &Path,
    backups_dir: &Path,
    n: usize,
) -> std::io::Result<PathBuf> {
    crate::store::create_private_dir(backups_dir)?;
    let stamp = time::OffsetDateTime::now_utc()
        .format(&time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_else(|_| "backup".into());
    let name = original
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let target = backups_dir.join(format!("{stamp}-{n}-{name}.sealed"));
    atomic_write(&target, bytes)?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn writes_are_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.json");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        atomic_write(&p, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        let b = write_backup(b"sealed", &p, &dir.path().join("backups"), 0).unwrap();
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "sealed");
        assert!(
            b.display().to_string().ends_with("-0-c.json.sealed"),
            "{}",
            b.display()
        );
    }
}
