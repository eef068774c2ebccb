//! bitnet-run: generate text, dump logits, measure perplexity or speed with the fast runner.

use anyhow::{bail, Context, Result};
use bitnet::cli::{open_model, EXIT_OK};
use bitnet::kernels::Kernel;
use bitnet::outln;
use bitnet::output::AtomicFile;
use bitnet::runner::{fast::Session, reference, sample::Sampler, weights::Weights};
use bitnet::tokenizer::Tokenizer;
use clap::Parser;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    version,
    about = "Run a .bnet (or GGUF) model: generate text, dump logits, perplexity, benchmark",
    long_about = "Run a .bnet model (or a GGUF file, imported on the fly) with the fast SIMD runner.\n\n\
bitnet-run model.bnet --prompt \"Once upon a time\" -n 64     stream generated text (greedy unless --temp > 0)\n\
bitnet-run model.bnet --ids 1,2,3 --dump-logits out.safetensors   f32 logits [positions, vocab]\n\
bitnet-run model.bnet --ppl held-out.txt --ctx 512          perplexity over a text file\n\
bitnet-run model.bnet --bench                                prompt and decode tokens/s\n\n\
The kernel path is the best this CPU has; BITNET_KERNEL=scalar|avx2|avx512 forces one.\n\
Decode prefetches its weights into L2, or with prefetchnta on Zen 5; BITNET_PREFETCH=l2|nta forces one.\n\
Exit codes: 0 success, 2 error."
)]
struct Args {
    /// The .bnet model (or a GGUF file, imported on the fly)
    model: PathBuf,
    /// Prompt text
    #[arg(long, conflicts_with = "ids")]
    prompt: Option<String>,
    /// Wrap the prompt as a user message in the model's chat template (from the container)
    #[arg(long, requires = "prompt")]
    chat: bool,
    /// Token ids instead of text, comma separated
    #[arg(long, value_delimiter = ',')]
    ids: Option<Vec<u32>>,
    /// Tokens to generate
    #[arg(short = 'n', long, default_value_t = 64, conflicts_with_all = NOT_GENERATING)]
    tokens: usize,
    /// Sampling temperature; 0 is greedy
    #[arg(long, default_value_t = 0.0, conflicts_with_all = NOT_GENERATING, allow_negative_numbers = true)]
    temp: f32,
    /// Sample only among the k most likely tokens (0: all)
    #[arg(long, default_value_t = 0, conflicts_with_all = NOT_GENERATING)]
    top_k: usize,
    /// Sample only from the smallest set of tokens whose probability reaches p
    #[arg(long, default_value_t = 1.0, conflicts_with_all = NOT_GENERATING)]
    top_p: f32,
    /// Random seed for sampling
    #[arg(long, default_value_t = 0, conflicts_with_all = NOT_GENERATING)]
    seed: u64,
    /// Write f32 logits [positions, vocab] of the prompt / ids to this .safetensors file
    #[arg(long)]
    dump_logits: Option<PathBuf>,
    /// Perplexity over this text file
    #[arg(long, conflicts_with_all = ["prompt", "ids", "dump_logits", "bench", "chat"])]
    ppl: Option<PathBuf>,
    /// Context length per perplexity window [default: 512]
    #[arg(long)]
    ctx: Option<usize>,
    /// Also compute the perplexity with the f32 reference (slow) and report the difference
    #[arg(long)]
    ppl_reference: bool,
    /// Benchmark prompt processing and decoding (on a synthetic prompt)
    #[arg(long, conflicts_with_all = ["prompt", "ids", "dump_logits", "chat"])]
    bench: bool,
    /// Prompt tokens for --bench [default: 128]
    #[arg(long)]
    bench_prompt: Option<usize>,
    /// Decode tokens for --bench [default: 128]
    #[arg(long)]
    bench_decode: Option<usize>,
    /// Worker threads (default: all cores)
    #[arg(long)]
    threads: Option<usize>,
    /// Overwrite the --dump-logits output
    #[arg(long)]
    force: bool,
    /// JSON output for --ppl and --bench
    #[arg(long)]
    json: bool,
}

/// The modes in which generation's options mean nothing: given with one of them, they are an
/// error rather than silently ignored.
const NOT_GENERATING: [&str; 3] = ["ppl", "bench", "dump_logits"];

/// A byte count in decimal units, as the GB/s beside it.
fn bytes(b: u64) -> String {
    match b as f64 {
        v if v >= 1e9 => format!("{:.2} GB", v / 1e9),
        v if v >= 1e6 => format!("{:.1} MB", v / 1e6),
        v if v >= 1e3 => format!("{:.1} kB", v / 1e3),
        _ => format!("{b} B"),
    }
}

fn nll(logits: &[f32], target: u32) -> f64 {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = logits
        .iter()
        .map(|&v| (v as f64 - m).exp())
        .sum::<f64>()
        .ln()
        + m;
    lse - logits[target as usize] as f64
}

/// `--threads` beyond this many per core is refused, not just warned about.
const MAX_OVERSUBSCRIPTION: usize = 4;

/// Refuses options that mean something only in another mode (clap's `conflicts_with` covers
/// the rest; its `requires` skips flags with implicit defaults, as booleans have): given there,
/// they would be silently ignored.
fn refuse_out_of_mode(a: &Args) -> Result<()> {
    if a.temp == 0.0 && (a.top_k != 0 || a.top_p != 1.0 || a.seed != 0) {
        bail!("--top-k, --top-p and --seed shape sampling, which --temp above 0 turns on (generation is greedy by default)");
    }
    if a.force && a.dump_logits.is_none() {
        bail!("--force overwrites the --dump-logits output; it means nothing in other modes");
    }
    let ppl_only = [
        ("--ctx", a.ctx.is_some()),
        ("--ppl-reference", a.ppl_reference),
    ];
    if let Some((flag, _)) = ppl_only.iter().find(|(_, given)| *given && a.ppl.is_none()) {
        bail!("{flag} goes with --ppl FILE (perplexity); it means nothing in other modes");
    }
    let bench_only = [
        ("--bench-prompt", a.bench_prompt),
        ("--bench-decode", a.bench_decode),
    ];
    if let Some((flag, _)) = bench_only.iter().find(|(_, n)| n.is_some() && !a.bench) {
        bail!("{flag} goes with --bench; it means nothing in other modes");
    }
    if a.json && a.ppl.is_none() && !a.bench {
        bail!("--json is the output of --ppl and --bench; generation streams text, and --dump-logits writes a file");
    }
    Ok(())
}

fn run(a: Args) -> Result<()> {
    // bad sampling settings are refused before any work, whatever the mode
    let mut sampler = Sampler::new(a.temp, a.top_k, a.top_p, a.seed)?;
    refuse_out_of_mode(&a)?;
    if let Some(n) = a.threads {
        if n == 0 {
            bail!("--threads 0: give at least 1 (leave it out to use every core)");
        }
        let cores = std::thread::available_parallelism().map_or(n, |c| c.get());
        if n > MAX_OVERSUBSCRIPTION * cores {
            // 1000 threads on 2 cores took 45 s for what 2 do in 0.03 s; 100000 did not finish
            bail!(
                "--threads {n} is more than {MAX_OVERSUBSCRIPTION} times the {cores} cores \
                 available, which only makes decoding slower; use at most {cores}"
            );
        }
        if n > cores {
            // decode's threads meet at a barrier several times per layer: a thread without a
            // core of its own stalls all of them (measured: 2 cores, --threads 3: −35%)
            eprintln!(
                "warning: --threads {n} is more than the {cores} cores available; decoding \
                 will be slower than with --threads {cores}"
            );
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    if let Some(out) = &a.dump_logits {
        if !out
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
        {
            bail!(
                "{}: --dump-logits writes a safetensors file; name it *.safetensors",
                out.display()
            );
        }
        // before any work, and never over the model itself
        bitnet::output::check_dest(out, a.force)?;
        bitnet::output::check_not_input(out, &a.model)?;
    }
    let f = open_model(&a.model, a.json)?;
    let w = Weights::load(&f).with_context(|| a.model.display().to_string())?;
    let kern = Kernel::selected().map_err(anyhow::Error::msg)?;
    let tok = Tokenizer::from_container(&f);
    let ctx = w.cfg.max_position_embeddings as usize;

    if a.bench {
        let (prompt, decode) = (a.bench_prompt.unwrap_or(128), a.bench_decode.unwrap_or(128));
        let r = bitnet::runner::bench::run(&w, kern, prompt, decode)?;
        if a.json {
            outln!("{}", serde_json::to_string_pretty(&r)?)?;
        } else {
            // weights this small stay in the caches between tokens: no memory-bandwidth figure
            let cached = r.weight_bytes_per_decode_token < 32 << 20;
            outln!(
                "kernel {} (prefetch {}), {} threads: prompt {} tokens at {:.1} tokens/s, decode {} tokens at {:.1} tokens/s\n\
                 decode reads {} of weights and {} of KV cache per token: {:.2} GB/s, \
                 {:.0}% of the {:.2} GB/s this process can read the weights at{}",
                r.kernel, r.prefetch, r.threads, r.prompt_tokens, r.prompt_tokens_per_s, r.decode_tokens,
                r.decode_tokens_per_s, bytes(r.weight_bytes_per_decode_token),
                bytes(r.kv_cache_bytes_per_decode_token), r.decode_gb_per_s,
                100.0 * r.decode_share_of_bandwidth, r.read_bandwidth_gb_per_s,
                if cached { " (weights this small may stay in the CPU's caches: these need not be memory-bound figures)" } else { "" }
            )?;
            if let Some(m) = r.resident_after_decode {
                // the mapped container (for a GGUF, the .bnet it was imported to)
                outln!(
                    "resident after decoding: {}: {} of mapped file pages (weights read in place \
                     from the {} container, and this program), {} anonymous (of it {} of KV cache)",
                    bytes(m.total_bytes),
                    bytes(m.file_bytes),
                    bytes(f.map.len() as u64),
                    bytes(m.anon_bytes),
                    bytes(r.kv_cache_bytes)
                )?;
            }
        }
        return Ok(());
    }

    if let Some(path) = &a.ppl {
        let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
        let text = String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}: not UTF-8 text (invalid byte at offset {}); perplexity reads a UTF-8 text file",
                path.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        if text.is_empty() {
            bail!(
                "{}: the file is empty; perplexity needs at least 2 tokens of text",
                path.display()
            );
        }
        let tok = tok.map_err(|e| anyhow::anyhow!("{e}"))?;
        let ids = tok.encode(&text)?;
        bitnet::runner::check_ids(&w.cfg, &ids)?;
        let want = a.ctx.unwrap_or(512);
        let win = want.min(ctx);
        if win < 2 {
            bail!(
                "perplexity needs windows of at least 2 tokens (--ctx {want}, model context {ctx})"
            );
        }
        if ids.len() < 2 {
            bail!(
                "{}: too little text for perplexity (need at least 2 tokens)",
                path.display()
            );
        }
        let (mut sum, mut sum_ref, mut n) = (0f64, 0f64, 0usize);
        for chunk in ids.chunks(win).filter(|c| c.len() >= 2) {
            let l = Session::new(&w, kern).forward(chunk, true)?;
            for (p, &t) in l.iter().zip(&chunk[1..]) {
                sum += nll(p, t);
                n += 1;
            }
            if a.ppl_reference {
                let r = reference::logits(&w, chunk)?;
                sum_ref += r
                    .iter()
                    .zip(&chunk[1..])
                    .map(|(p, &t)| nll(p, t))
                    .sum::<f64>();
            }
        }
        if !sum.is_finite() {
            bail!("the model's logits are NaN or infinite on this text: its weights are damaged (bitnet-inspect --verify, then re-pack)");
        }
        let ppl = (sum / n as f64).exp();
        let ppl_ref = a.ppl_reference.then(|| (sum_ref / n as f64).exp());
        if a.json {
            outln!(
                "{}",
                serde_json::json!({"tokens": n, "ctx": win, "perplexity": ppl, "reference_perplexity": ppl_ref})
            )?;
        } else {
            outln!("perplexity {ppl:.4} over {n} predicted tokens (windows of {win})")?;
            if let Some(r) = ppl_ref {
                outln!(
                    "reference  {r:.4} (relative difference {:.2e})",
                    (ppl - r).abs() / r
                )?;
            }
        }
        return Ok(());
    }

    let prompt = match (a.chat, a.prompt.as_deref()) {
        (true, Some(p)) if a.ids.is_none() => {
            Some(bitnet::tokenizer::chat_prompt_ids(&f, &tok, p)?)
        }
        (true, _) => {
            bail!("--chat wraps --prompt TEXT in the chat template: give --prompt (not --ids)")
        }
        (false, _) => bitnet::tokenizer::prompt_ids(a.ids.as_deref(), a.prompt.as_deref(), &tok)?,
    };
    let Some(prompt) = prompt else {
        bail!("nothing to run: give --prompt TEXT, --ids, --ppl FILE or --bench");
    };
    bitnet::runner::check_ids(&w.cfg, &prompt)?;
    if prompt.len() > ctx {
        bail!(
            "the prompt is {} tokens, longer than the model's context of {ctx}",
            prompt.len()
        );
    }

    if let Some(out) = &a.dump_logits {
        let l = Session::new(&w, kern).forward(&prompt, true)?;
        let v = w.cfg.vocab_size;
        let mut bytes = bitnet::format::safetensors_header(
            &[(
                "logits".into(),
                "F32",
                vec![l.len() as u64, v],
                l.len() as u64 * v * 4,
            )],
            &serde_json::Map::from_iter([(
                "ids".to_string(),
                serde_json::json!(format!("{prompt:?}")),
            )]),
        );
        for row in &l {
            row.iter()
                .for_each(|x| bytes.extend_from_slice(&x.to_le_bytes()));
        }
        let mut af = AtomicFile::create(out, a.force)?;
        af.file()
            .write_all(&bytes)
            .map_err(|e| bitnet::output::write_error(out, e))?;
        af.commit()?;
        eprintln!("wrote {}: logits [{}, {v}]", out.display(), l.len());
        return Ok(());
    }

    // the last token is sampled from the last position and never fed back, so a prompt that
    // fills the context still has one
    let n = a.tokens.min(ctx + 1 - prompt.len());
    if n < a.tokens {
        eprintln!(
            "note: generating at most {n} of the {} tokens asked for: the prompt's {} tokens and \
             the generated ones but the last must fit the model's context of {ctx}",
            a.tokens,
            prompt.len()
        );
    }
    let stop = bitnet::runner::stop_tokens(&f, &w.cfg)?;
    let mut s = Session::new(&w, kern);
    s.reserve(prompt.len() + n.saturating_sub(1));
    let mut last = s.forward(&prompt, false)?.pop().expect("one");
    let mut out_ids: Vec<u32> = Vec::new();
    let mut printed = 0usize;
    let mut stdout = std::io::stdout().lock();
    for i in 0..n {
        if !last.iter().all(|v| v.is_finite()) {
            bail!("the model's logits are NaN or infinite: its weights are damaged (bitnet-inspect --verify, then re-pack)");
        }
        let t = sampler.next(&last);
        if stop.contains(&t) {
            break;
        }
        out_ids.push(t);
        match &tok {
            Ok(k) => {
                let text = k.decode(&out_ids)?;
                // print only complete characters (a token may end inside a UTF-8 sequence), and
                // only text that extends what was printed: a decoder may rewrite earlier text
                if !text.ends_with('\u{FFFD}') {
                    if let Some(new) = text.get(printed..) {
                        write!(stdout, "{new}")?;
                        printed = text.len();
                    }
                }
            }
            Err(_) => write!(stdout, "{t} ")?,
        }
        stdout.flush()?;
        if i + 1 < n {
            last = s.forward(&[t], false)?.pop().expect("one");
        }
    }
    writeln!(stdout)?;
    Ok(())
}

fn main() -> ExitCode {
    bitnet::cli::keep_freed_buffers();
    bitnet::cli::exit(run(Args::parse()).map(|()| EXIT_OK))
}
