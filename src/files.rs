//! Files the gateway owns: written atomically, readable by its own user only.
//!
//! An SD card loses power mid-write. A key or certificate written in place (truncate, then write) can be left
//! empty or half-written, and a torn key must never stop the gateway from starting. So every secret, certificate
//! and state file is written to a temporary file beside it, synced, renamed over the old one, and the directory is
//! synced: after a power cut the old file or the new one is there, whole. The data directory is 0700 and its files
//! 0600: `config.sqlite` holds password hashes and the CA key lives in `pki/`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of the data directory and every directory Weir creates in it.
pub const PRIVATE_DIR: u32 = 0o700;
/// Mode of every file Weir writes into its data directory, and of keys wherever they go.
pub const PRIVATE_FILE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError { path: path.to_owned(), source }
}

/// Replaces `path` with `bytes` atomically and durably, with `mode`: a temporary file in the same directory,
/// written and synced, renamed over `path`, then the directory synced so that the rename survives a power cut.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut file =
            fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        // The mode given at creation is filtered by the umask, and a leftover temporary keeps its old mode.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(FileError { path: path.to_owned(), source });
    }
    if let Err(source) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(FileError { path: path.to_owned(), source });
    }
    sync_dir(dir).map_err(at(dir))
}

/// Creates `dir` and its missing parents; the directories created get mode 0700. An existing directory is left
/// as it is (an output folder of the operator's own, say).
pub fn create_private_dir(dir: &Path) -> Result<(), FileError> {
    fs::DirBuilder::new().recursive(true).mode(PRIVATE_DIR).create(dir).map_err(at(dir))
}

/// Makes the data directory 0700 and everything Weir owns in it 0600 (directories 0700), creating it if need be.
/// Returns the paths whose modes were looser and have been repaired, for the log: an older version, a restored
/// backup or an operator's copy may have left them readable by others.
pub fn secure_data_dir(dir: &Path) -> Result<Vec<PathBuf>, FileError> {
    create_private_dir(dir)?;
    let mut repaired = Vec::new();
    restrict(dir, PRIVATE_DIR, &mut repaired)?;
    for entry in fs::read_dir(dir).map_err(at(dir))? {
        let path = entry.map_err(at(dir))?.path();
        let meta = fs::symlink_metadata(&path).map_err(at(&path))?;
        // The CA's directory, and the journal's payload log.
        if meta.is_dir() && path.file_name().is_some_and(|n| n == "pki" || n == "journal.payloads") {
            restrict(&path, PRIVATE_DIR, &mut repaired)?;
            for inner in fs::read_dir(&path).map_err(at(&path))? {
                let inner = inner.map_err(at(&path))?.path();
                if fs::symlink_metadata(&inner).map_err(at(&inner))?.is_file() {
                    restrict(&inner, PRIVATE_FILE, &mut repaired)?;
                }
            }
        } else if meta.is_file() {
            restrict(&path, PRIVATE_FILE, &mut repaired)?;
        }
    }
    Ok(repaired)
}

/// Takes away what `mode` does not allow (never adds permissions); records the path if anything was taken.
fn restrict(path: &Path, mode: u32, repaired: &mut Vec<PathBuf>) -> Result<(), FileError> {
    let current = fs::metadata(path).map_err(at(path))?.permissions().mode() & 0o777;
    if current & !mode != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(current & mode)).map_err(at(path))?;
        repaired.push(path.to_owned());
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn an_atomic_write_replaces_the_file_and_never_the_old_one_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.key");
        write_atomic(&path, b"old key", 0o600).unwrap();
        // A reader holding the old file (or a hard link to it: what a torn in-place write would damage).
        let link = dir.path().join("held");
        fs::hard_link(&path, &link).unwrap();
        write_atomic(&path, b"new key", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new key");
        assert_eq!(fs::read(&link).unwrap(), b"old key", "the old file was replaced, not rewritten");
        assert_eq!(mode(&path), 0o600);
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "no temporary file left behind: {left:?}");
    }

    #[test]
    fn the_data_directory_is_made_private_and_looser_modes_are_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(data.join("config.sqlite"), b"x").unwrap();
        fs::set_permissions(data.join("config.sqlite"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::create_dir(data.join("pki")).unwrap();
        fs::write(data.join("pki/ca.key"), b"k").unwrap();
        fs::set_permissions(data.join("pki/ca.key"), fs::Permissions::from_mode(0o640)).unwrap();
        let repaired = secure_data_dir(&data).unwrap();
        assert_eq!(repaired.len(), 4, "{repaired:?}");
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("config.sqlite")), 0o600);
        assert_eq!(mode(&data.join("pki")), 0o700);
        assert_eq!(mode(&data.join("pki/ca.key")), 0o600);
        assert!(secure_data_dir(&data).unwrap().is_empty(), "nothing to repair the second time");
        let fresh = dir.path().join("fresh/nested");
        secure_data_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }
}
