//! bitnet-verify: the fast runner against the f32 reference on the same tokens.

use anyhow::{Context, Result};
use bitnet::cli::{open_model, EXIT_FAILED, EXIT_OK};
use bitnet::kernels::Kernel;
use bitnet::model::ModelConfig;
use bitnet::outln;
use bitnet::runner::compare::{compare, summarize};
use bitnet::runner::{fast::Session, reference, weights::Weights};
use bitnet::tokenizer::Tokenizer;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    version,
    about = "Check the fast runner against the f32 reference on the same tokens",
    long_about = "Runs the SIMD runner and the plain f32 reference (which mirrors transformers) on the same token \
sequence: the prompt, then --tokens greedy tokens of the reference. Reports max |delta logit|, KL divergence, \
top-1 agreement, top-5 overlap and RMS delta-p per position and in summary, and whether the greedy \
continuations are identical.\n\nExit codes: 0 within tolerance, 1 outside, 2 error.\n\
The kernel path is the best this CPU has; BITNET_KERNEL=scalar|avx2|avx512 forces one.\n\
Decode prefetches its weights into L2, or with prefetchnta on Zen 5; BITNET_PREFETCH=l2|nta forces one."
)]
struct Args {
    /// The .bnet model (or a GGUF file, imported on the fly)
    model: PathBuf,
    /// Prompt text (tokenized with the container's tokenizer); this or --ids
    #[arg(long, required_unless_present = "ids")]
    prompt: Option<String>,
    /// Token ids instead of a prompt, comma separated
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    ids: Option<Vec<u32>>,
    /// Run the reference on another packing of the same model: a .bnet (e.g. packed with a
    /// bf16 lm_head, to measure what --lm-head i8 costs), a GGUF file (imported on the fly), or
    /// the original Hugging Face checkpoint (packed afresh with default options into a
    /// temporary file)
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Greedy tokens of the reference appended to the prompt
    #[arg(long, default_value_t = 16)]
    tokens: usize,
    /// Tolerance: largest |delta logit| at any position. Default 0.15: int8 rounding-boundary
    /// flips between two correct float32 implementations reach ~0.1 on small models.
    #[arg(long, default_value_t = 0.15, value_parser = tolerance::<f64>)]
    max_delta: f64,
    /// Tolerance: mean KL(reference || fast) in nats
    #[arg(long, default_value_t = 1e-4, value_parser = tolerance::<f64>)]
    max_kl: f64,
    /// Print every position
    #[arg(long)]
    per_position: bool,
    /// JSON report on stdout
    #[arg(long)]
    json: bool,
}

/// The model to run the reference on: a .bnet as it is (a GGUF file imported on the fly by
/// `open_model`), or a Hugging Face checkpoint packed with default options into an unlinked
/// temporary file, so that nothing is left behind however the run ends (Ctrl-C included).
fn reference_model(p: &std::path::Path) -> Result<bitnet::format::BnetFile> {
    std::fs::metadata(p).with_context(|| format!("--reference {}", p.display()))?;
    if bitnet::format::is_bnet(p) || bitnet::format::gguf::is_gguf(p) {
        return Ok(open_model(p, true)?);
    }
    let config = if p.is_dir() {
        p.join("config.json")
    } else {
        p.with_file_name("config.json")
    };
    let safetensors = p
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let checkpoint = (p.is_dir() || safetensors) && config.is_file();
    if !checkpoint {
        anyhow::bail!(
            "--reference {}: not a .bnet or GGUF file, nor a Hugging Face checkpoint (a \
             directory, or a .safetensors file, with config.json beside the weights)",
            p.display()
        );
    }
    let ck = bitnet::hf::Checkpoint::open(p, &bitnet::hf::Sources::default())?;
    let pack_to = |sink, dest: &std::path::Path| {
        Ok(bitnet::pack::pack(&ck, sink, dest, &Default::default(), &|_| {})?.0)
    };
    let what = "packing the reference checkpoint";
    Ok(bitnet::format::BnetFile::unlinked(what, p, pack_to)?)
}

fn argmax(x: &[f32]) -> u32 {
    bitnet::runner::compare::top_k(x, 1)[0] as u32
}

fn run(a: Args) -> Result<u8> {
    let f = open_model(&a.model, a.json)?;
    let w = Weights::load(&f).with_context(|| a.model.display().to_string())?;
    let ref_file = a.reference.as_deref().map(reference_model).transpose()?;
    let ref_w = match &ref_file {
        Some(rf) => Some(Weights::load(rf)?),
        None => None,
    };
    let rw = ref_w.as_ref().unwrap_or(&w);
    same_model(&rw.cfg, &w.cfg)?;
    let kern = Kernel::selected().map_err(anyhow::Error::msg)?;
    let tok = Tokenizer::from_container(&f);
    let prompt = bitnet::tokenizer::prompt_ids(a.ids.as_deref(), a.prompt.as_deref(), &tok)?
        .expect("clap requires --prompt or --ids");
    bitnet::runner::check_ids(&w.cfg, &prompt)?;
    if prompt.len() + a.tokens > w.cfg.max_position_embeddings as usize {
        let ctx = w.cfg.max_position_embeddings as usize;
        anyhow::bail!(
            "{} prompt tokens + {} generated exceed the model's context of {ctx}; {}",
            prompt.len(),
            a.tokens,
            match ctx.saturating_sub(prompt.len()) {
                0 => "use a shorter prompt".to_string(),
                room => format!("use at most --tokens {room}, or a shorter prompt"),
            }
        );
    }
    // The reference, from scratch at every step (it has no cache by design).
    let mut ids = prompt.clone();
    let mut ref_margins = Vec::new();
    for _ in 0..a.tokens {
        let l = reference::logits(rw, &ids)?;
        let last = l.last().expect("non-empty");
        ref_margins.push(compare(last, last).ref_margin);
        ids.push(argmax(last));
    }
    let ref_logits = reference::logits(rw, &ids)?;
    // The fast runner: the whole sequence as one batch, then its own greedy continuation.
    let fast_logits = Session::new(&w, kern).forward(&ids, true)?;
    let mut s = Session::new(&w, kern);
    s.reserve(prompt.len() + a.tokens);
    let mut last = s.forward(&prompt, false)?.pop().expect("one");
    let mut fast_greedy = Vec::new();
    for _ in 0..a.tokens {
        let t = argmax(&last);
        fast_greedy.push(t);
        if fast_greedy.len() < a.tokens {
            last = s.forward(&[t], false)?.pop().expect("one");
        }
    }
    let ref_greedy = &ids[prompt.len()..];
    let per: Vec<_> = ref_logits
        .iter()
        .zip(&fast_logits)
        .map(|(r, f)| compare(r, f))
        .collect();
    let sum = summarize(&per);
    let diverge = ref_greedy
        .iter()
        .zip(&fast_greedy)
        .position(|(x, y)| x != y);
    // what failed, in words; a divergence is tolerated only at a near-tie of the reference
    // (margin within the band)
    let mut failed = Vec::new();
    if sum.non_finite_positions > 0 {
        failed.push(format!(
            "NaN or infinite logits at {} of {} positions",
            sum.non_finite_positions, sum.positions
        ));
    }
    if sum.max_abs_delta as f64 > a.max_delta {
        failed.push(format!(
            "max |delta| {:.3e} > {}",
            sum.max_abs_delta, a.max_delta
        ));
    }
    if sum.kl_mean > a.max_kl {
        failed.push(format!("KL mean {:.3e} > {}", sum.kl_mean, a.max_kl));
    }
    if let Some(i) = diverge.filter(|&i| ref_margins[i] as f64 > 2.0 * a.max_delta) {
        failed.push(format!(
            "greedy tokens differ at token {i}, where the reference's top-1/top-2 margin {:.3} is no near-tie (> 2 x {})",
            ref_margins[i], a.max_delta
        ));
    }
    let pass = failed.is_empty();
    let text = |t: &[u32]| {
        tok.as_ref()
            .ok()
            .and_then(|k| k.decode(t).ok())
            .unwrap_or_default()
    };
    if a.json {
        let j = serde_json::json!({
            "model": a.model, "reference": a.reference, "family": f.index.meta.get("family"), "kernel": kern.name(),
            "prompt_tokens": prompt.len(), "generated_tokens": a.tokens, "ids": ids,
            "summary": sum, "positions": per,
            "greedy": {"identical": diverge.is_none(), "first_divergence": diverge, "reference": ref_greedy,
                       "fast": fast_greedy, "reference_text": text(ref_greedy)},
            "tolerances": {"max_delta": a.max_delta, "max_kl_mean": a.max_kl},
            "pass": pass, "failed": failed,
        });
        outln!("{}", serde_json::to_string_pretty(&j)?)?;
    } else {
        outln!(
            "model     {} ({}), kernel {}, {} tokens ({} prompt + {} greedy)",
            a.model.display(),
            f.index
                .meta
                .get("family")
                .and_then(|v| v.as_str())
                .unwrap_or("?"),
            kern.name(),
            ids.len(),
            prompt.len(),
            a.tokens
        )?;
        if let Some(r) = &a.reference {
            outln!("reference {}", r.display())?;
        }
        if a.per_position {
            outln!(
                "{:>4} {:>7} {:>10} {:>10} {:>5} {:>5} {:>10} {:>8}",
                "pos",
                "token",
                "max|dl|",
                "KL",
                "top1",
                "top5",
                "RMS dp",
                "margin"
            )?;
            for (i, p) in per.iter().enumerate() {
                outln!(
                    "{i:>4} {:>7} {:>10.3e} {:>10.3e} {:>5} {:>5.2} {:>10.3e} {:>8.3}",
                    ids[i],
                    p.max_abs_delta,
                    p.kl,
                    if p.top1_agree { "yes" } else { "NO" },
                    p.top5_overlap,
                    p.rms_delta_p,
                    p.ref_margin
                )?;
            }
        }
        outln!(
            "logits    max |delta| {:.3e}, KL mean {:.3e} / p99 {:.3e} / max {:.3e} nats, top-1 agreement {:.1}%, top-5 overlap {:.1}%, RMS delta-p {:.3e}",
            sum.max_abs_delta, sum.kl_mean, sum.kl_p99, sum.kl_max, 100.0 * sum.top1_agreement, 100.0 * sum.top5_overlap, sum.rms_delta_p
        )?;
        if sum.non_finite_positions > 0 {
            outln!(
                "logits    NaN or infinite at {} of {} positions (in the reference, the fast path or both): the model's weights are damaged or a kernel is wrong",
                sum.non_finite_positions, sum.positions
            )?;
        }
        match diverge {
            None => outln!("greedy    identical for {} tokens: {:?}", a.tokens, text(ref_greedy))?,
            Some(i) => outln!(
                "greedy    differ from token {i} (reference margin there {:.3}): reference {:?}, fast {:?}",
                ref_margins[i],
                text(ref_greedy),
                text(&fast_greedy)
            )?,
        }
        if pass {
            outln!(
                "verdict   PASS (finite logits, max |delta| <= {}, KL mean <= {}, greedy identical except at near-ties)",
                a.max_delta,
                a.max_kl
            )?;
        } else {
            outln!("verdict   FAIL: {}", failed.join("; "))?;
        }
    }
    Ok(if pass { EXIT_OK } else { EXIT_FAILED })
}

/// Refuses a reference that is another model (other shapes, activation or architecture): its
/// logits would fail every check and say nothing about the fast path.
fn same_model(r: &ModelConfig, m: &ModelConfig) -> Result<()> {
    let fields = |c: &ModelConfig| {
        [
            ("vocab_size", c.vocab_size.to_string()),
            ("hidden_size", c.hidden_size.to_string()),
            ("intermediate_size", c.intermediate_size.to_string()),
            ("num_hidden_layers", c.num_hidden_layers.to_string()),
            ("num_attention_heads", c.num_attention_heads.to_string()),
            ("num_key_value_heads", c.num_key_value_heads.to_string()),
            ("head_dim", c.head_dim.to_string()),
            ("hidden_act", c.hidden_act.name().to_string()),
            (
                "architecture",
                format!("{:?}", c.architecture).to_lowercase(),
            ),
        ]
    };
    let differ: Vec<String> = fields(r)
        .into_iter()
        .zip(fields(m))
        .filter(|((_, a), (_, b))| a != b)
        .map(|((k, a), (_, b))| format!("{k} {a} against the model's {b}"))
        .collect();
    if !differ.is_empty() {
        anyhow::bail!(
            "the reference is another model ({}); give the same model packed differently, or its checkpoint",
            differ.join(", ")
        );
    }
    Ok(())
}

/// A tolerance flag's value: a number, 0 or more (`inf` turns the check off). A NaN or
/// negative tolerance would fail every model, so it is a usage error (exit 2), not a verdict.
fn tolerance<T: std::str::FromStr + PartialOrd + Default>(s: &str) -> Result<T, String> {
    let v: T = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    // NaN compares false
    if v >= T::default() {
        Ok(v)
    } else {
        Err(format!(
            "{s} is not a tolerance: give 0 or more (inf turns the check off)"
        ))
    }
}

fn main() -> ExitCode {
    bitnet::cli::keep_freed_buffers();
    bitnet::cli::exit(run(Args::parse()))
}
