//! Atomic outputs: everything is written to a temporary file in the target directory and
//! renamed into place at the end, so a crash or Ctrl-C never leaves a half-written file under
//! the final name.

use crate::error::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Removes a temporary output, a file or a directory; whether there was one.
fn remove(p: &Path) -> bool {
    match p.is_dir() {
        true => std::fs::remove_dir_all(p).is_ok(),
        false => std::fs::remove_file(p).is_ok(),
    }
}

/// Temporary outputs in progress, removed by the Ctrl-C handler before the process exits.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// On the first call, installs a SIGINT/SIGTERM handler that removes every temporary output in
/// progress and exits with 130, so an interrupted run leaves nothing behind. (SIGKILL cannot be
/// caught: then a `.NAME.PID.XXXXXX.tmp` file may remain. It never takes the final name, and the
/// next run writing NAME removes it once process PID is gone; see [`remove_stale`].)
fn install_interrupt_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            let removed = match PENDING.lock() {
                Ok(p) => p.iter().filter(|f| remove(f)).count(),
                Err(_) => 0,
            };
            // nothing pending: no output begun yet, or it was complete and in place
            match removed {
                0 => eprintln!("\ninterrupted"),
                _ => eprintln!("\ninterrupted: the partial output was removed"),
            }
            std::process::exit(130);
        });
    });
}

/// Checks that `dest` can be written (its directory exists; it does not exist unless `force`)
/// and returns its directory. Run it before long work, so that a bad output path fails early.
pub fn check_dest(dest: &Path, force: bool) -> Result<PathBuf> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        let (what, advice) = match parent.exists() {
            true => ("is a file, not a directory", "choose another output path"),
            false => (
                "does not exist",
                "create it first or choose another output path",
            ),
        };
        return Err(Error::Output(format!(
            "{}: output directory {} {what}; {advice}",
            dest.display(),
            parent.display()
        )));
    }
    if dest.is_dir() {
        return Err(Error::Output(format!(
            "{}: is a directory; give the path of the output file (one inside it, for example)",
            dest.display()
        )));
    }
    if dest.exists() && !force {
        return Err(Error::Output(format!(
            "{}: already exists; pass --force to overwrite it",
            dest.display()
        )));
    }
    Ok(parent)
}

/// Refuses an output that is the input file itself (a mistyped `--dump-logits model.bnet
/// --force` would replace the model with its logits).
pub fn check_not_input(dest: &Path, input: &Path) -> Result<()> {
    let same = match (std::fs::canonicalize(dest), std::fs::canonicalize(input)) {
        (Ok(d), Ok(i)) => d == i,
        _ => false,
    };
    if same {
        return Err(Error::Output(format!(
            "{}: is the input file; write the output to another path",
            dest.display()
        )));
    }
    Ok(())
}

/// Removes `.NAME.PID.XXXXXX.tmp` files in `dir` whose writer, process PID, no longer exists
/// (killed with SIGKILL, or the machine crashed): a half-written model can be gigabytes. Files of
/// live processes, and anything not matching the pattern exactly, are left alone. Linux only
/// (`/proc` says whether a process exists); elsewhere stale files are ignored, never renamed.
fn remove_stale(dir: &Path, name: &str) {
    #[cfg(target_os = "linux")]
    {
        let prefix = format!(".{name}.");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let file = e.file_name();
            let Some(pid) = file
                .to_str()
                .and_then(|f| f.strip_prefix(&prefix)?.strip_suffix(".tmp"))
                .and_then(|rest| rest.split_once('.'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            // a zombie (dead, not yet reaped by its parent) counts as gone
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
            let zombie = state
                .as_deref()
                .and_then(|s| s.rsplit_once(") "))
                .is_some_and(|(_, rest)| rest.starts_with('Z'));
            let alive = pid == std::process::id() || (state.is_some() && !zombie);
            if !alive && remove(&e.path()) {
                eprintln!(
                    "note: removed {}, left by an interrupted run (process {pid})",
                    e.path().display()
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (dir, name);
}

/// Checks `dest`, removes dead runs' temporaries beside it and installs the interrupt handler;
/// returns its directory and the `.NAME.PID.` prefix of its temporary (the writer's pid lets a
/// later run tell a dead writer's temporary from a live one).
fn prepare(dest: &Path, force: bool) -> Result<(PathBuf, String)> {
    let parent = check_dest(dest, force)?;
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    remove_stale(&parent, name);
    install_interrupt_handler();
    Ok((parent, format!(".{name}.{}.", std::process::id())))
}

/// An output directory (an unpacked model) that appears under its name only when `commit`
/// succeeds; built beside it, and removed on error, drop or Ctrl-C as [`AtomicFile`]s are.
pub struct AtomicDir {
    tmp: PathBuf,
    dest: PathBuf,
}

impl AtomicDir {
    /// Checks the destination (which must not exist) and creates the temporary directory.
    pub fn create(dest: &Path) -> Result<AtomicDir> {
        let (parent, prefix) = prepare(dest, false)?;
        let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".tmp")
            .tempdir_in(&parent)
            .map_err(|e| write_error(dest, e))?
            .keep();
        pending.push(tmp.clone());
        Ok(AtomicDir {
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    /// The directory to fill.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Renames the directory into place (never over an existing one).
    pub fn commit(self) -> Result<()> {
        let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        if self.dest.exists() {
            return Err(Error::Output(format!(
                "{}: appeared while unpacking; it was left as it is",
                self.dest.display()
            )));
        }
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| write_error(&self.dest, e))?;
        pending.retain(|f| *f != self.tmp);
        Ok(())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        // after a commit the temporary is gone and this does nothing
        if self.tmp.is_dir() {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// An output file that appears under its name only when `commit` succeeds.
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
    force: bool,
}

impl AtomicFile {
    /// Checks the destination and creates the temporary file beside it.
    pub fn create(dest: &Path, force: bool) -> Result<AtomicFile> {
        let (parent, prefix) = prepare(dest, force)?;
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        #[cfg(unix)]
        {
            // tempfile creates 0600; a model file is ordinary output (0644 under umask 022).
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(std::fs::Permissions::from_mode(0o644));
        }
        // created under the lock, so an interrupt that lands in between still sees (and removes)
        // the new file: the handler runs on its own thread and waits for the lock
        let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = builder
            .tempfile_in(&parent)
            .map_err(|e| write_error(dest, e))?;
        pending.push(tmp.path().to_path_buf());
        drop(pending);
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
        // Under the lock: an interrupt now either removes the temporary file before the rename or
        // comes after it, never between. (An output dropped on an error path stays listed;
        // removing a missing file is harmless.)
        let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.tmp.path().to_path_buf();
        let res = if self.force {
            self.tmp.persist(&dest)
        } else {
            self.tmp.persist_noclobber(&dest)
        };
        pending.retain(|f| *f != path);
        drop(pending);
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
        // said in full: the system's "File exists" would only repeat it
        std::io::ErrorKind::AlreadyExists => {
            return Error::Output(format!(
                "{}: already exists; pass --force to overwrite it",
                dest.display()
            ))
        }
        _ => "write failed; the partial output was removed",
    };
    Error::Output(format!("{}: {advice} ({e})", dest.display()))
}

/// The error for a temporary file (outside the output's directory) that could not be created
/// or written: it lives in `TMPDIR`, which the message names, since that is what to change.
pub fn temp_error(what: &str, e: std::io::Error) -> Error {
    Error::Output(format!(
        "{what} needs a temporary file in {}, which failed ({e}); set TMPDIR to a writable directory with room",
        std::env::temp_dir().display()
    ))
}

/// Messages to the writer thread.
enum Msg {
    Data(Vec<u8>),
    Seek(
        std::io::SeekFrom,
        std::sync::mpsc::SyncSender<std::io::Result<u64>>,
    ),
    Flush(std::sync::mpsc::SyncSender<std::io::Result<()>>),
}

/// A buffered writer whose `write` syscalls run on a thread of their own, so copying output
/// into the page cache overlaps with quantizing and hashing the next tensor instead of
/// stalling the worker threads. At most `DEPTH` buffers of `BUF` bytes are in flight.
pub struct BackgroundWriter {
    buf: Vec<u8>,
    tx: Option<std::sync::mpsc::SyncSender<Msg>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundWriter {
    const BUF: usize = 4 << 20;
    const DEPTH: usize = 4;

    pub fn new<W: std::io::Write + std::io::Seek + Send + 'static>(mut w: W) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(Self::DEPTH);
        let thread = std::thread::spawn(move || {
            let mut failed: Option<std::io::Error> = None;
            for msg in rx {
                match msg {
                    Msg::Data(d) => {
                        if failed.is_none() {
                            failed = w.write_all(&d).err();
                        }
                    }
                    Msg::Seek(pos, reply) => {
                        let r = match failed.take() {
                            Some(e) => Err(e),
                            None => w.seek(pos),
                        };
                        let _ = reply.send(r);
                    }
                    Msg::Flush(reply) => {
                        let r = match failed.take() {
                            Some(e) => Err(e),
                            None => w.flush(),
                        };
                        let _ = reply.send(r);
                    }
                }
            }
        });
        BackgroundWriter {
            buf: Vec::with_capacity(Self::BUF),
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    fn send(&mut self, m: Msg) -> std::io::Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(m).ok())
            .ok_or_else(|| std::io::Error::other("writer thread stopped"))
    }

    fn send_buf(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(Self::BUF));
            self.send(Msg::Data(full))?;
        }
        Ok(())
    }

    fn ask<T>(
        &mut self,
        make: impl FnOnce(std::sync::mpsc::SyncSender<std::io::Result<T>>) -> Msg,
    ) -> std::io::Result<T> {
        self.send_buf()?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.send(make(tx))?;
        rx.recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("writer thread stopped")))
    }
}

impl std::io::Write for BackgroundWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > Self::BUF {
            self.send_buf()?;
        }
        if data.len() >= Self::BUF {
            self.send(Msg::Data(data.to_vec()))?;
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }

    /// Waits until every byte has been written; reports the first write error.
    fn flush(&mut self) -> std::io::Result<()> {
        self.ask(Msg::Flush)
    }
}

impl std::io::Seek for BackgroundWriter {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.ask(|r| Msg::Seek(pos, r))
    }
}

impl Drop for BackgroundWriter {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
