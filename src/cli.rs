//! What the binaries share: exit codes and error lines, the progress bar, the allocator setting
//! and opening a model (a `.bnet` or a GGUF import).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Success.
pub const EXIT_OK: u8 = 0;
/// The check ran and failed (checksum mismatch, out of tolerance).
pub const EXIT_FAILED: u8 = 1;
/// Bad input, bad usage or an I/O error.
pub const EXIT_ERROR: u8 = 2;

/// A byte-count progress bar on stderr; hidden with `--quiet` or when stderr is not a terminal.
pub fn progress_bar(total: u64, msg: &str, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if quiet {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// `println!` to stdout that returns the write's error instead of panicking, so a closed pipe
/// (`bitnet-inspect m.bnet --tensors | head`) or a full disk ends the binary through [`exit`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// `print!` as [`outln!`] is `println!`.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// Ends a binary: prints an error as one `error:` line (with its causes, [`chain_message`])
/// and maps the outcome to the exit code. A reader that closed the output pipe early (`| head`)
/// ends it quietly: that is the reader's choice, not an error to report, though the exit code
/// still says the output is incomplete.
pub fn exit<E>(outcome: Result<u8, E>) -> std::process::ExitCode
where
    E: AsRef<dyn std::error::Error + Send + Sync + 'static>,
{
    match outcome {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            if !is_broken_pipe(e.as_ref()) {
                eprintln!("error: {}", chain_message(e.as_ref()));
            }
            std::process::ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Whether an error, or one of its causes, is a write to a closed pipe.
fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| e.source()).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// An error and its causes joined by ": ", each said once. A file error names its path and
/// repeats its cause's text, and the binaries add the path they were working on as context, so
/// the plain chain read "/tmp: /tmp: No such device (os error 19): No such device (os error
/// 19)". A message that the next one begins with (followed by ": "), or a cause that the
/// message before ends with, is dropped.
pub fn chain_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msgs = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !msgs.last().is_some_and(|prev| prev.ends_with(&m)) {
            msgs.push(m);
        }
        cur = c.source();
    }
    let keep = |(i, m): (usize, &String)| {
        let next = msgs.get(i + 1);
        !next.is_some_and(|n| {
            n.strip_prefix(m.as_str())
                .is_some_and(|r| r.starts_with(": "))
        })
    };
    let kept: Vec<&str> = msgs
        .iter()
        .enumerate()
        .filter(|&p| keep(p))
        .map(|(_, m)| m.as_str())
        .collect();
    kept.join(": ")
}

/// Lets the C allocator keep freed buffers of up to 32 MiB for reuse instead of returning them
/// to the kernel. The runner allocates and frees the same large temporaries (a projection's
/// outputs for every prompt token, several MB each) in every layer; glibc otherwise maps and
/// unmaps each one, and the page faults and page zeroing took ~7% of a 2-thread prompt
/// (perf); 128-token prompts ran 10–40% faster at 2 threads with this (alternating runs). The
/// cost is that up to the peak of those temporaries stays resident. Only glibc has these knobs;
/// elsewhere this does nothing.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        // glibc's malloc.h: M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3 (32 MiB is its cap)
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        // SAFETY: mallopt only changes allocator parameters; it is called before the threads
        // that allocate are busy, and a refused value (return 0) leaves the defaults in place.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

/// Opens a model for the runner binaries: a `.bnet`, or a GGUF file imported on the fly (with
/// a note on stderr unless `quiet`). Errors name the file.
pub fn open_model(
    path: &std::path::Path,
    quiet: bool,
) -> Result<crate::format::BnetFile, crate::Error> {
    let gguf = crate::format::gguf::is_gguf(path);
    let started = std::time::Instant::now();
    let (f, _) = crate::gguf_io::open_model(path).map_err(|e| {
        let hint = if gguf {
            " (GGUF files are converted on the fly; for import options such as --activation or --bitnet-cpp, convert once with bitnet-pack FILE OUT.bnet)"
        } else {
            ""
        };
        match &e {
            // it names the path already
            crate::Error::Io { path: p, .. } if p == path => {
                crate::Error::Usage(format!("{e}{hint}"))
            }
            _ => crate::Error::Usage(format!("{}: {e}{hint}", path.display())),
        }
    })?;
    if gguf && !quiet {
        eprintln!(
            "note: {} is GGUF: imported to a temporary .bnet in {:.2} s (bitnet-pack converts it once)",
            path.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::chain_message;

    /// An error with a message and an optional cause.
    #[derive(Debug)]
    struct E(String, Option<Box<E>>);

    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    fn chain(msgs: &[&str]) -> E {
        msgs.iter()
            .rev()
            .fold(None, |cause, m| Some(E(m.to_string(), cause.map(Box::new))))
            .unwrap()
    }

    #[test]
    fn error_chains_say_each_thing_once() {
        // context, a file error naming its path and cause, the cause
        let e = chain(&["/tmp", "/tmp: No such device", "No such device"]);
        assert_eq!(chain_message(&e), "/tmp: No such device");
        // distinct messages are all kept, in order
        let e = chain(&["model.bnet", "not a valid .bnet file: bad magic"]);
        assert_eq!(
            chain_message(&e),
            "model.bnet: not a valid .bnet file: bad magic"
        );
        let e = chain(&["reading config", "x.json", "expected value at line 1"]);
        assert_eq!(
            chain_message(&e),
            "reading config: x.json: expected value at line 1"
        );
        // a message equal to the next is said once
        let e = chain(&["same", "same"]);
        assert_eq!(chain_message(&e), "same");
        assert_eq!(chain_message(&chain(&["alone"])), "alone");
        // a context that is only a prefix of the next path is kept
        let e = chain(&["/tmp/a", "/tmp/ab: No such file"]);
        assert_eq!(chain_message(&e), "/tmp/a: /tmp/ab: No such file");
    }
}
