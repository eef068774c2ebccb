//! bitnet-pack: Hugging Face checkpoint -> .bnet, or .bnet -> safetensors (by file types).

use anyhow::{bail, Context, Result};
use bitnet::cli::{progress_bar, EXIT_OK};
use bitnet::format::gguf::{is_gguf, Gguf};
use bitnet::format::{is_bnet, BnetFile};
use bitnet::gguf_io::{export, import, ImportOptions, TernaryType};
use bitnet::hf::{Checkpoint, Sources, TokenizerFiles};
use bitnet::memory::peak_rss_bytes;
use bitnet::model::Activation;
use bitnet::outln;
use bitnet::output::{AtomicFile, BackgroundWriter};
use bitnet::pack::{pack, unpack, Layout, PackOptions, QuantKind, StoreAs};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    version,
    about = "Pack a BitNet / ternary Hugging Face checkpoint into a .bnet container; unpack a .bnet; export or import GGUF",
    long_about = "Pack a BitNet / ternary Hugging Face checkpoint into a .bnet container; unpack a .bnet; export or import GGUF.\n\n\
The direction follows from the file types: IN a model directory or .safetensors file and OUT a .bnet packs; \
IN a .bnet and OUT a .safetensors unpacks (dequantized f32 weights, the config in __metadata__); IN a .bnet and any other OUT writes a model directory transformers can load; \
IN a .bnet or a checkpoint and OUT a .gguf exports for llama.cpp / bitnet.cpp (--gguf-type); IN a .gguf and OUT a .bnet imports (formats/gguf.md).\n\n\
Exit codes: 0 success, 2 error (nothing is left under OUT, unless only printing the --json report failed)."
)]
struct Args {
    /// Model directory (config.json, *.safetensors or a sharded index, tokenizer files), a .safetensors file, a .bnet to unpack or export, or a .gguf to import
    input: PathBuf,
    /// Output: a .bnet container; when unpacking, a .safetensors file or a new model directory; a .gguf to export
    output: PathBuf,
    /// config.json to use (default: the one beside the weights)
    #[arg(long)]
    config: Option<PathBuf>,
    /// tokenizer.json to use (default: the one beside the weights)
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Pack without a tokenizer, even one beside the weights (the model then cannot encode text)
    #[arg(long, conflicts_with = "tokenizer")]
    no_tokenizer: bool,
    /// Weight quantization for latent (float) checkpoints
    #[arg(long, value_enum, default_value_t = Quant::Ternary)]
    quant: Quant,
    /// How to store the token embeddings
    #[arg(long, value_enum, default_value_t = Store::Keep)]
    embeddings: Store,
    /// How to store the lm_head; for a tied model, anything but keep adds a separate copy that decoding reads instead of the embeddings (i8: 8 bits per weight, q4: 4.5)
    #[arg(long, value_enum, default_value_t = Store::Keep)]
    lm_head: Store,
    /// Layout of ternary projections when OUT is a .bnet [default: tl]: tl (5 bits per 3 weights in 32-row blocks: 17% fewer bytes for every decoded token to read, the same results; format version 1.2) or t2 (2 bits per weight, row by row; format version 1.0, for readers older than 1.2)
    #[arg(long, value_enum)]
    ternary_layout: Option<TernaryLayout>,
    /// Ternary type of the projections when OUT is a .gguf: tq2_0 and tq1_0 load in llama.cpp (rows must be multiples of 256), i2_s in bitnet.cpp
    #[arg(long, value_enum, default_value_t = GgufType::Tq2_0)]
    gguf_type: GgufType,
    /// GGUF import: the FFN activation, for files of architecture 'bitnet' that do not state it
    #[arg(long, value_enum)]
    activation: Option<Act>,
    /// GGUF import: read type ids 36-39 as bitnet.cpp's (I2_S, ...) even though the file does not say it comes from bitnet.cpp
    #[arg(long)]
    bitnet_cpp: bool,
    /// Overwrite OUT if it exists
    #[arg(long)]
    force: bool,
    /// No progress bar and no summary
    #[arg(long, short)]
    quiet: bool,
    /// Print the result as JSON on stdout
    #[arg(long)]
    json: bool,
    /// The ids of the options given on the command line (not defaulted).
    #[arg(skip)]
    given: Vec<String>,
}

/// Options of packing a checkpoint, whatever the output.
const PACKING: [&str; 6] = [
    "config",
    "tokenizer",
    "no_tokenizer",
    "quant",
    "embeddings",
    "lm_head",
];

/// The other options that apply in some directions only.
const DIRECTIONAL: [&str; 4] = ["ternary_layout", "gguf_type", "activation", "bitnet_cpp"];

/// Refuses a directional option given for a direction (`doing`) that does not use it: it would
/// be silently ignored (an import's output was byte-identical with and without `--lm-head q4`).
fn refuse_unused(a: &Args, doing: &str, used: &[&str]) -> Result<()> {
    let flag = |id: &str| format!("--{}", id.replace('_', "-"));
    let unused = a
        .given
        .iter()
        .map(String::as_str)
        .find(|id| (PACKING.contains(id) || DIRECTIONAL.contains(id)) && !used.contains(id));
    if let Some(id) = unused {
        let applies = match used {
            [] => "no conversion options apply".to_string(),
            _ => format!(
                "these apply: {}",
                used.iter().map(|u| flag(u)).collect::<Vec<_>>().join(", ")
            ),
        };
        bail!(
            "{} does not apply when {doing}; {applies}; drop it",
            flag(id)
        );
    }
    Ok(())
}

#[derive(Clone, Copy, ValueEnum)]
enum Quant {
    /// absmean ternary {-1, 0, +1}: 5 bits per 3 weights in the default TL layout, 2 with --ternary-layout t2
    Ternary,
    /// sign binary {-1, +1} (original BitNet), 1 bit per weight
    Binary,
}

#[derive(Clone, Copy, ValueEnum)]
enum TernaryLayout {
    /// 2 bits per weight, row by row (formats/bnet.md §4.1)
    T2,
    /// 5 bits per 3 weights, blocks of 32 rows, table-lookup kernels (formats/bnet.md §4.4)
    Tl,
}

#[derive(Clone, Copy, ValueEnum)]
enum GgufType {
    /// llama.cpp TQ2_0: 2.06 bits per weight, fp16 scale per 256 weights
    #[value(name = "tq2_0")]
    Tq2_0,
    /// llama.cpp TQ1_0: 1.69 bits per weight (slower to decode)
    #[value(name = "tq1_0")]
    Tq1_0,
    /// bitnet.cpp I2_S: 2 bits per weight, one f32 scale per tensor
    #[value(name = "i2_s")]
    I2s,
}

#[derive(Clone, Copy, ValueEnum)]
enum Act {
    Relu2,
    Silu,
}

#[derive(Clone, Copy, ValueEnum)]
enum Store {
    /// the checkpoint's own dtype, bit for bit
    Keep,
    /// IEEE half precision
    F16,
    /// int8 with one f32 scale per row
    I8,
    /// 4 bits per weight in blocks of 32 with an f16 scale (4.5 bits per weight; ggml's Q4_0 block)
    Q4,
}

impl From<TernaryLayout> for Layout {
    fn from(l: TernaryLayout) -> Layout {
        match l {
            TernaryLayout::T2 => Layout::T2,
            TernaryLayout::Tl => Layout::TL,
        }
    }
}

impl From<Store> for StoreAs {
    fn from(s: Store) -> StoreAs {
        match s {
            Store::Keep => StoreAs::Keep,
            Store::F16 => StoreAs::F16,
            Store::I8 => StoreAs::I8,
            Store::Q4 => StoreAs::Q4,
        }
    }
}

fn has_ext(p: &Path, ext: &str) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

fn run(a: Args) -> Result<()> {
    // a missing input is that, not a checkpoint of the wrong direction's options
    std::fs::metadata(&a.input).with_context(|| a.input.display().to_string())?;
    let to_gguf = has_ext(&a.output, "gguf");
    if a.ternary_layout.is_some() && !has_ext(&a.output, "bnet") {
        bail!(
            "--ternary-layout sets how a .bnet output stores ternary weights; {} is not a .bnet \
             (GGUF exports use --gguf-type)",
            a.output.display()
        );
    }
    if matches!(a.quant, Quant::Binary) && a.ternary_layout.is_some() {
        bail!(
            "--ternary-layout sets how ternary weights are stored; --quant binary makes binary \
             ones, which are always B1 (1 bit per weight): drop one of the two options"
        );
    }
    if is_gguf(&a.input) {
        if !has_ext(&a.output, "bnet") {
            bail!(
                "{}: a GGUF input is imported into a .bnet container; name the output *.bnet",
                a.output.display()
            );
        }
        refuse_unused(
            &a,
            "importing a GGUF file",
            &["activation", "bitnet_cpp", "ternary_layout"],
        )?;
        return run_import(&a);
    }
    if is_bnet(&a.input) || has_ext(&a.input, "bnet") {
        if to_gguf {
            refuse_unused(
                &a,
                "exporting a .bnet to GGUF, whose tensors go out as stored (export the checkpoint itself to store them otherwise)",
                &["gguf_type"],
            )?;
            let f = BnetFile::open(&a.input).with_context(|| a.input.display().to_string())?;
            return run_export(&a, &f);
        }
        if has_ext(&a.output, "bnet") {
            bail!(
                "{}: unpacking a .bnet writes a .safetensors file or a model directory, not another .bnet",
                a.output.display()
            );
        }
        refuse_unused(&a, "unpacking a .bnet", &[])?;
        if has_ext(&a.output, "safetensors") {
            return run_unpack(&a);
        }
        return run_unpack_dir(&a);
    }
    if to_gguf {
        let used = [&PACKING[..], &["gguf_type"]].concat();
        refuse_unused(&a, "exporting a checkpoint to GGUF", &used)?;
        // checkpoint -> GGUF goes through a container in an unlinked temporary file, so
        // nothing is left behind whatever happens
        bitnet::output::check_dest(&a.output, a.force)?; // fail before packing
        let parent = a.output.parent().filter(|p| !p.as_os_str().is_empty());
        let tmp = tempfile::tempfile_in(parent.unwrap_or(Path::new(".")))
            .map_err(|e| bitnet::output::write_error(&a.output, e))?;
        // the export prints the one summary (and the one JSON document)
        run_pack(&a, tmp.try_clone()?, &a.output, Target::Gguf)?;
        let f = BnetFile::from_file(&tmp, &a.output)?;
        return run_export(&a, &f);
    }
    if !has_ext(&a.output, "bnet") {
        bail!(
            "{}: the output must be a .bnet container or a .gguf file",
            a.output.display()
        );
    }
    let used = [&PACKING[..], &["ternary_layout"]].concat();
    refuse_unused(&a, "packing a checkpoint into a .bnet", &used)?;
    let mut out = AtomicFile::create(&a.output, a.force)?;
    let file = out
        .file()
        .try_clone()
        .map_err(|e| bitnet::output::write_error(&a.output, e))?;
    run_pack(&a, file, &a.output, Target::Bnet(out))
}

/// What a pack is for.
enum Target {
    /// The .bnet output: committed, then reported.
    Bnet(AtomicFile),
    /// A container for the GGUF export, which reports.
    Gguf,
}

/// Refuses what a GGUF made from this checkpoint would not carry: a tied model's `--lm-head`
/// copy, and embeddings or heads that would come back as F16 (int8, or 4-bit rows that are not
/// whole Q4_0 blocks).
fn refuse_for_gguf(a: &Args, cfg: &bitnet::model::ModelConfig) -> Result<()> {
    if cfg.tie_word_embeddings && !matches!(a.lm_head, Store::Keep) {
        bail!(
            "--lm-head on a tied model adds a copy of the embeddings for decoding, which a GGUF \
             does not carry (llama.cpp reads the head from token_embd): drop --lm-head, or use \
             --embeddings to store that tensor otherwise"
        );
    }
    let q4 = matches!(a.embeddings, Store::Q4) || matches!(a.lm_head, Store::Q4);
    if q4 && !cfg.hidden_size.is_multiple_of(32) {
        bail!(
            "GGUF holds 4-bit embeddings and heads as Q4_0, whose rows are whole blocks of 32; \
             hidden_size {} is not a multiple of 32, so they would come out as F16: use f16",
            cfg.hidden_size
        );
    }
    if matches!(a.embeddings, Store::I8) || matches!(a.lm_head, Store::I8) {
        bail!(
            "GGUF export writes int8 embeddings and heads as F16, which only loses precision: \
             use f16 or q4 (ggml's Q4_0), or leave the option out"
        );
    }
    Ok(())
}

/// Packs the checkpoint IN into `file` (`dest` names the output in messages) for `target`.
fn run_pack(a: &Args, file: std::fs::File, dest: &Path, target: Target) -> Result<()> {
    let started = std::time::Instant::now();
    let ck = Checkpoint::open(
        &a.input,
        &Sources {
            config: a.config.clone(),
            tokenizer: a.tokenizer.clone(),
            tokenizer_files: if a.no_tokenizer {
                TokenizerFiles::Without
            } else {
                TokenizerFiles::Required
            },
        },
    )?;
    if let Target::Gguf = target {
        refuse_for_gguf(a, &ck.config)?;
    }
    if !a.quiet && !a.json {
        eprintln!(
            "detected {} checkpoint ({} layers, hidden {}, {} activation) in {}",
            ck.family.name(),
            ck.config.num_hidden_layers,
            ck.config.hidden_size,
            ck.config.hidden_act.name(),
            a.input.display()
        );
    }
    let total: u64 = ck.tensors.values().map(|t| (t.end - t.start) as u64).sum();
    let pb = progress_bar(total, "packing", a.quiet || a.json);
    let opts = PackOptions {
        quant: match a.quant {
            Quant::Ternary => QuantKind::Ternary,
            Quant::Binary => QuantKind::Binary,
        },
        embeddings: a.embeddings.into(),
        lm_head: a.lm_head.into(),
        layout: a.ternary_layout.map_or(Layout::default(), Layout::from),
    };
    let (mut sink, report) = pack(&ck, BackgroundWriter::new(file), dest, &opts, &|n| {
        pb.inc(n)
    })?;
    sink.flush()
        .map_err(|e| bitnet::output::write_error(dest, e))?;
    drop(sink);
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let Target::Bnet(out) = target else {
        return Ok(());
    };
    // in place before the report: a script that reads "done" finds the file, and a reader that
    // stops early (--json | head -1) does not cost the finished pack
    out.commit()?;
    if a.json {
        let mut j = serde_json::to_value(&report)?;
        j["seconds"] = secs.into();
        j["input_gb_per_s"] = (report.input_bytes as f64 / secs / 1e9).into();
        j["peak_rss_bytes"] = peak_rss_bytes().into();
        outln!("{}", serde_json::to_string_pretty(&j)?)?;
    } else if !a.quiet {
        eprintln!(
            "wrote {}: {} tensors, {} ({:.4} bits per quantized weight) in {secs:.2} s{}",
            dest.display(),
            report.tensors,
            bitnet::inspect::human(report.output_bytes),
            8.0 * report.packed_bytes as f64 / report.quantized_weights.max(1) as f64,
            if report.skipped.is_empty() {
                String::new()
            } else {
                format!("; skipped {}", report.skipped.join(", "))
            }
        );
    }
    Ok(())
}

/// Flushes a conversion's buffered output and returns its size.
fn commit_output(dest: &Path, sink: BufWriter<&mut std::fs::File>) -> Result<u64> {
    let file = sink
        .into_inner()
        .map_err(|e| bitnet::output::write_error(dest, e.into_error()))?;
    Ok(file.metadata().map(|m| m.len()).unwrap_or(0))
}

/// Prints notes and the summary of a GGUF conversion.
fn report_conversion(
    a: &Args,
    what: &str,
    notes: &[String],
    json: serde_json::Value,
    secs: f64,
) -> Result<()> {
    if a.json {
        let mut j = json;
        j["seconds"] = secs.into();
        outln!("{}", serde_json::to_string_pretty(&j)?)?;
    } else if !a.quiet {
        for n in notes {
            eprintln!("note: {n}");
        }
        eprintln!("{what} in {secs:.2} s");
    }
    Ok(())
}

fn run_export(a: &Args, f: &BnetFile) -> Result<()> {
    let started = std::time::Instant::now();
    let mut out = AtomicFile::create(&a.output, a.force)?;
    let ty = match a.gguf_type {
        GgufType::Tq2_0 => TernaryType::Tq2_0,
        GgufType::Tq1_0 => TernaryType::Tq1_0,
        GgufType::I2s => TernaryType::I2s,
    };
    let total = f.index.entries.iter().map(|e| e.len).sum();
    let pb = progress_bar(total, "exporting", a.quiet || a.json);
    let sink = BufWriter::with_capacity(8 << 20, out.file());
    // an error of the input's data names the input (write errors name the output already)
    let (sink, mut report) =
        export(f, sink, &a.output, ty, &|n| pb.inc(n)).map_err(|e| match e {
            bitnet::Error::Output(_) => anyhow::Error::from(e),
            e => anyhow::Error::from(e).context(a.input.display().to_string()),
        })?;
    report.output_bytes = commit_output(&a.output, sink)?;
    out.commit()?;
    pb.finish_and_clear();
    let what = format!(
        "wrote {}: GGUF architecture {}, projections {}, {} tensors, {}",
        a.output.display(),
        report.architecture,
        report.ggml_type,
        report.tensors,
        bitnet::inspect::human(report.output_bytes)
    );
    report_conversion(
        a,
        &what,
        &report.notes,
        serde_json::to_value(&report)?,
        started.elapsed().as_secs_f64(),
    )
}

fn run_import(a: &Args) -> Result<()> {
    let started = std::time::Instant::now();
    let mut out = AtomicFile::create(&a.output, a.force)?;
    let file = std::fs::File::open(&a.input).with_context(|| a.input.display().to_string())?;
    // SAFETY: read-only mapping of a file we do not modify (see BnetFile::open).
    let map =
        unsafe { memmap2::Mmap::map(&file) }.with_context(|| a.input.display().to_string())?;
    let g = Gguf::parse(&map, a.bitnet_cpp).with_context(|| a.input.display().to_string())?;
    let opts = ImportOptions {
        activation: a.activation.map(|x| match x {
            Act::Relu2 => Activation::Relu2,
            Act::Silu => Activation::Silu,
        }),
        layout: a.ternary_layout.map_or(Layout::default(), Layout::from),
    };
    let total = g.tensors.iter().map(|t| t.len).sum();
    let pb = progress_bar(total, "importing", a.quiet || a.json);
    let sink = BufWriter::with_capacity(8 << 20, out.file());
    let (sink, report) = import(&g, &map, &a.input, sink, &a.output, &opts, &|n| pb.inc(n))
        .with_context(|| a.input.display().to_string())?;
    commit_output(&a.output, sink)?;
    out.commit()?;
    pb.finish_and_clear();
    let what = format!(
        "wrote {}: {} tensors from GGUF architecture {}, {}",
        a.output.display(),
        report.tensors,
        report.architecture,
        bitnet::inspect::human(report.output_bytes)
    );
    report_conversion(
        a,
        &what,
        &report.notes,
        serde_json::to_value(&report)?,
        started.elapsed().as_secs_f64(),
    )
}

fn run_unpack(a: &Args) -> Result<()> {
    let mut out = AtomicFile::create(&a.output, a.force)?;
    let f = BnetFile::open(&a.input).with_context(|| a.input.display().to_string())?;
    let total = f.index.entries.iter().map(|e| e.len).sum();
    let pb = progress_bar(total, "unpacking", a.quiet || a.json);
    let sink = BufWriter::with_capacity(8 << 20, out.file());
    let (sink, n) = unpack(&f.index, &f.map, sink, &a.output, &|b| pb.inc(b))?;
    sink.into_inner()
        .map_err(|e| bitnet::output::write_error(&a.output, e.into_error()))?;
    out.commit()?;
    pb.finish_and_clear();
    if a.json {
        outln!("{}", serde_json::json!({"output": a.output, "tensors": n}))?;
    } else if !a.quiet {
        eprintln!("wrote {}: {n} tensors", a.output.display());
    }
    Ok(())
}

/// Unpacks into a Hugging Face model directory, built in a temporary directory beside it and
/// renamed into place when complete.
fn run_unpack_dir(a: &Args) -> Result<()> {
    let dest = &a.output;
    if dest.exists() {
        bail!(
            "{}: already exists; unpacking into a directory never overwrites one (remove it first)",
            dest.display()
        );
    }
    let f = BnetFile::open(&a.input).with_context(|| a.input.display().to_string())?;
    let out = bitnet::output::AtomicDir::create(dest)?;
    let total = f.index.entries.iter().map(|e| e.len).sum();
    let pb = progress_bar(total, "unpacking", a.quiet || a.json);
    let n = bitnet::pack::unpack_dir(&f.index, &f.map, out.path(), &|b| pb.inc(b))?;
    out.commit()?;
    pb.finish_and_clear();
    if a.json {
        outln!("{}", serde_json::json!({"output": dest, "tensors": n}))?;
    } else if !a.quiet {
        eprintln!(
            "wrote {}: model.safetensors ({n} tensors, dequantized), config.json, tokenizer files",
            dest.display()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let m = Args::command().get_matches();
    let mut a = Args::from_arg_matches(&m).unwrap_or_else(|e| e.exit());
    a.given = m
        .ids()
        .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.to_string())
        .collect();
    bitnet::cli::exit(run(a).map(|()| EXIT_OK))
}
