//! bitnet-inspect: what is inside a .bnet container; `--verify` checks every checksum.

use anyhow::{Context, Result};
use bitnet::cli::{EXIT_FAILED, EXIT_OK};
use bitnet::format::gguf::{is_gguf, Gguf};
use bitnet::format::{bnet, BnetFile};
use bitnet::gguf_io::{plan_import, ImportOptions};
use bitnet::inspect::{gguf_summary, render_gguf, Summary};
use bitnet::{out, outln};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    version,
    about = "Show what is inside a .bnet container or a GGUF file",
    long_about = "Show what is inside a .bnet container or a GGUF file (metadata, tensors, types, and what would block converting it to .bnet).\n\n\
Opening reads only the header, index and metadata; --verify re-hashes every tensor.\n\n\
Exit codes: 0 fine, 1 --verify found damage, 2 error (not a valid container, unreadable)."
)]
struct Args {
    /// The .bnet or .gguf file
    file: PathBuf,
    /// Machine-readable JSON on stdout
    #[arg(long)]
    json: bool,
    /// List every tensor (name, dtype, shape, bytes, scale)
    #[arg(long)]
    tensors: bool,
    /// Recompute every checksum (full read) and name each damaged tensor
    #[arg(long)]
    verify: bool,
    /// GGUF: read type ids 36-39 as bitnet.cpp's (I2_S, ...)
    #[arg(long)]
    bitnet_cpp: bool,
}

/// A GGUF file: what it holds and whether (or why not) it converts to .bnet.
fn run_gguf(a: &Args) -> Result<u8> {
    let file = std::fs::File::open(&a.file).with_context(|| a.file.display().to_string())?;
    // SAFETY: read-only mapping of a file we do not modify (see BnetFile::open).
    let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| a.file.display().to_string())?;
    let g = Gguf::parse(&map, a.bitnet_cpp).with_context(|| a.file.display().to_string())?;
    let plan = plan_import(&g, &ImportOptions::default());
    let j = gguf_summary(
        &g,
        map.len() as u64,
        a.tensors,
        plan.as_ref().map_err(|e| e.to_string()),
    );
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&j)?)?;
    } else {
        out!("{}", render_gguf(&j))?;
    }
    Ok(EXIT_OK)
}

fn run(a: Args) -> Result<u8> {
    if is_gguf(&a.file) {
        if a.verify {
            anyhow::bail!(
                "--verify re-hashes a .bnet's checksums, and a GGUF file carries none; its \
                 structure (offsets, sizes, types) is checked whenever it is read"
            );
        }
        return run_gguf(&a);
    }
    let t = Instant::now();
    let f = BnetFile::open(&a.file).with_context(|| a.file.display().to_string())?;
    if a.bitnet_cpp {
        anyhow::bail!("--bitnet-cpp is for GGUF files; a .bnet file states its own types");
    }
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut summary = serde_json::to_value(Summary::new(&f, a.tensors))?;
    summary["open_ms"] = open_ms.into();
    let text = Summary::new(&f, a.tensors).render();
    let mut code = EXIT_OK;
    let mut verify_text = String::new();
    if a.verify {
        let t = Instant::now();
        let r = bnet::verify(&f.index, &f.map);
        let secs = t.elapsed().as_secs_f64();
        let gbs = f.index.file_len as f64 / secs.max(1e-9) / 1e9;
        if r.ok() {
            verify_text = format!(
                "verify        OK: {} checksums match, of {} tensors and {} stored files ({:.2} GB/s)\n",
                f.index.entries.len(),
                f.index.entries.iter().filter(|e| !e.name.starts_with("file:")).count(),
                f.index.entries.iter().filter(|e| e.name.starts_with("file:")).count(),
                gbs
            );
        } else {
            code = EXIT_FAILED;
            for name in &r.bad_tensors {
                verify_text +=
                    &format!("verify        FAILED: checksum mismatch in tensor {name}\n");
            }
            for p in &r.problems {
                verify_text += &format!("verify        FAILED: {p}\n");
            }
            if !r.body_ok {
                verify_text += "verify        FAILED: whole-file checksum mismatch (damage outside the tensors, or in them)\n";
            }
            verify_text +=
                "the file is damaged: re-create it with bitnet-pack or download it again\n";
        }
        summary["verify"] = serde_json::json!({
            "ok": r.ok(), "bad_tensors": r.bad_tensors, "problems": r.problems,
            "body_ok": r.body_ok, "seconds": secs, "gb_per_s": gbs,
        });
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        out!("{text}{verify_text}")?;
    }
    Ok(code)
}

fn main() -> ExitCode {
    bitnet::cli::exit(run(Args::parse()))
}
