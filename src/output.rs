//! Atomic outputs: everything is written to a temporary file in the target directory and
//! renamed into place at the end, so a crash or Ctrl-C never leaves a half-written file under
//! the final name.

use crate::error::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// An output file that appears under its name only when `commit` succeeds.
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
    force: bool,
}

impl AtomicFile {
    /// Checks the destination and creates the temporary file beside it.
    pub fn create(dest: &Path, force: bool) -> Result<AtomicFile> {
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(Error::Output(format!(
                "{}: output directory {} does not exist; create it first or choose another output path",
                dest.display(),
                parent.display()
            )));
        }
        if dest.exists() && !force {
            return Err(Error::Output(format!(
                "{}: already exists; pass --force to overwrite it",
                dest.display()
            )));
        }
        let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("out");
        let mut builder = tempfile::Builder::new();
        let prefix = format!(".{name}.");
        builder.prefix(&prefix).suffix(".tmp");
        #[cfg(unix)]
        {
            // tempfile creates 0600; a model file is ordinary output (0644 under umask 022).
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(std::fs::Permissions::from_mode(0o644));
        }
        let tmp = builder
            .tempfile_in(&parent)
            .map_err(|e| write_error(dest, e))?;
        Ok(AtomicFile {
            tmp,
            dest: dest.to_path_buf(),
            force,
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Flushes to disk and renames into place.
    pub fn commit(self) -> Result<()> {
        let dest = self.dest.clone();
        self.tmp
            .as_file()
            .sync_all()
            .map_err(|e| write_error(&dest, e))?;
        let res = if self.force {
            self.tmp.persist(&dest)
        } else {
            self.tmp.persist_noclobber(&dest)
        };
        res.map(|_| ()).map_err(|e| write_error(&dest, e.error))
    }
}

/// Describes a failed write of `dest`, with advice for the common causes.
pub fn write_error(dest: &Path, e: std::io::Error) -> Error {
    let advice = match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            "disk full while writing: free some space or write to another disk; the partial output was removed"
        }
        std::io::ErrorKind::FileTooLarge => {
            "file too large for this file system or size limit; the partial output was removed"
        }
        std::io::ErrorKind::PermissionDenied => "permission denied: choose a writable output path",
        std::io::ErrorKind::AlreadyExists => "already exists; pass --force to overwrite it",
        _ => "write failed; the partial output was removed",
    };
    Error::Output(format!("{}: {advice} ({e})", dest.display()))
}
