//! The export directory's lock: an exclusive `flock` on `<dir>/.lock`, held while this
//! process exports. The Redis lease orders the exporters of one deployment; the lock keeps
//! two deployments (two Redis, or two prefixes) that share a volume from interleaving their
//! files. The kernel drops it when the process dies, so a crash never leaves it behind.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

const LOCK_FILE: &str = ".lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{0}: another process holds this audit export directory: this deployment's previous \
         exporter still letting go, or another deployment exporting here (give each its own \
         audit.files.dir)"
    )]
    Held(PathBuf),
    #[error("{0}: cannot lock the audit export directory: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Held until dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock at once, or says who has it.
    pub fn take(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |e| LockError::Io(path.clone(), e);
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(TryLockError::WouldBlock) => Err(LockError::Held(path)),
            Err(TryLockError::Error(e)) => Err(io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let first = DirLock::take(dir.path())?;
        assert!(matches!(DirLock::take(dir.path()), Err(LockError::Held(_))));
        drop(first);
        DirLock::take(dir.path())?;
        Ok(())
    }
}
