//! bitnet-verify and bitnet-run end to end on the fixtures: verdicts and exit codes, generation
//! against transformers' greedy text, dumped logits, perplexity against the reference, errors.

use assert_cmd::Command;
use serde_json::Value;
use std::path::{Path, PathBuf};

const FIXTURES: &[&str] = &[
    "bitnet-latent",
    "bitnet-packed",
    "llama-bitlinear",
    "onebitllm",
    "llama-bitlinear-256",
    "onebitllm-256",
];
/// The fixtures with latent (float) weights, which `--quant binary` can binarize.
const LATENT: &[&str] = &["bitnet-latent", "onebitllm", "onebitllm-256"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn packed(dir: &str, tmp: &Path, extra: &[&str]) -> PathBuf {
    let out = tmp.join(format!("{dir}.bnet"));
    let o = Command::cargo_bin("bitnet-pack")
        .unwrap()
        .arg(fixture(dir))
        .arg(&out)
        .args(extra)
        .args(["--quiet", "--force"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn golden_json(dir: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(dir).join("golden.json")).unwrap()).unwrap()
}

#[test]
fn verify_passes_on_every_family_and_kernel_path() {
    let tmp = tempfile::tempdir().unwrap();
    // and the latent fixtures binarized (B1 weights)
    let bin = tmp.path().join("binary");
    std::fs::create_dir(&bin).unwrap();
    let binaries = LATENT
        .iter()
        .map(|dir| (*dir, packed(dir, &bin, &["--quant", "binary"])));
    let ternaries = FIXTURES
        .iter()
        .map(|dir| (*dir, packed(dir, tmp.path(), &[])));
    for (dir, m) in ternaries.chain(binaries) {
        let prompt = golden_json(dir)["prompts"][1].as_str().unwrap().to_string();
        for kern in bitnet::kernels::Kernel::all_available() {
            let o = Command::cargo_bin("bitnet-verify")
                .unwrap()
                .env("BITNET_KERNEL", kern.name())
                .arg(&m)
                .args(["--prompt", &prompt, "--tokens", "8", "--json"])
                .output()
                .unwrap();
            assert_eq!(
                o.status.code(),
                Some(0),
                "{dir} {}: {}",
                kern.name(),
                String::from_utf8_lossy(&o.stderr)
            );
            let j: Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(j["pass"], true);
            assert_eq!(j["kernel"], kern.name());
            assert_eq!(j["greedy"]["identical"], true, "{dir}");
            assert!(j["summary"]["max_abs_delta"].as_f64().unwrap() <= 1e-4);
        }
    }
}

#[test]
fn verify_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let m = packed("bitnet-latent", tmp.path(), &[]);
    // outside tolerance: exit 1 (an int8 copy of the head, against the reference reading the
    // bf16 one, moves logits by far more than 1e-6 on every kernel path)
    let sub = tmp.path().join("i8");
    std::fs::create_dir(&sub).unwrap();
    let i8 = packed("bitnet-latent", &sub, &["--lm-head", "i8"]);
    let o = Command::cargo_bin("bitnet-verify")
        .unwrap()
        .arg(&i8)
        .args(["--reference", m.to_str().unwrap()])
        .args(["--ids", "0,42,79", "--tokens", "2", "--max-delta", "1e-6"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    // the verdict says what failed, and the report names the reference
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("verdict   FAIL: max |delta|") && out.contains("> 0.000001"),
        "{out}"
    );
    assert!(out.contains(&format!("reference {}", m.display())), "{out}");
    // a reference that is another model, or not a model at all: exit 2, saying so
    let other = packed("llama-bitlinear-256", tmp.path(), &[]);
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    for (reference, msg) in [
        (
            &other,
            "the reference is another model (hidden_size 256 against the model's 64",
        ),
        (
            &readme,
            "not a .bnet or GGUF file, nor a Hugging Face checkpoint",
        ),
    ] {
        let o = Command::cargo_bin("bitnet-verify")
            .unwrap()
            .arg(&m)
            .arg("--reference")
            .arg(reference)
            .args(["--ids", "0,42,79", "--tokens", "2"])
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert!(e.contains(msg), "{e}");
    }
    // errors: exit 2; a tolerance that no model can meet is one
    for (flag, msg) in [
        ("--max-delta=-1", "-1 is not a tolerance"),
        ("--max-kl=nan", "nan is not a tolerance"),
    ] {
        let o = Command::cargo_bin("bitnet-verify")
            .unwrap()
            .arg(&m)
            .args(["--ids", "0,42,79", flag])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{flag}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(msg), "{flag}");
    }
    env_is_refused(
        "bitnet-verify",
        &m,
        ("BITNET_KERNEL", "sse9"),
        "BITNET_KERNEL=\"sse9\" is not a kernel path",
    );
    // set but empty is unset
    for var in ["BITNET_KERNEL", "BITNET_PREFETCH"] {
        Command::cargo_bin("bitnet-run")
            .unwrap()
            .env(var, "")
            .arg(&m)
            .args(["--ids", "0", "-n", "1"])
            .assert()
            .success();
    }
    // a real path this CPU lacks (avx512 on most machines): a clear error, never a crash or a
    // silent fallback
    for name in bitnet::kernels::Kernel::names() {
        if bitnet::kernels::Kernel::named(name).is_some() {
            continue;
        }
        for bin in ["bitnet-verify", "bitnet-run"] {
            let msg = format!("this CPU cannot run the {name} path");
            env_is_refused(bin, &m, ("BITNET_KERNEL", name), &msg);
        }
    }
    let o = Command::cargo_bin("bitnet-verify")
        .unwrap()
        .arg(tmp.path().join("nope.bnet"))
        .args(["--ids", "0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn greedy_generation_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in FIXTURES {
        let m = packed(dir, tmp.path(), &[]);
        let g = golden_json(dir);
        let detail = &g["prompts_detail"][0];
        let margins: Vec<f64> = detail["greedy_top1_top2_margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        // compare only up to the first near-tie of transformers' own run
        let n = margins
            .iter()
            .position(|&m| m < 0.3)
            .unwrap_or(margins.len());
        let o = Command::cargo_bin("bitnet-run")
            .unwrap()
            .arg(&m)
            .args([
                "--prompt",
                detail["prompt"].as_str().unwrap(),
                "-n",
                &n.to_string(),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let ids: Vec<u32> = detail["greedy"].as_array().unwrap()[..n]
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let f = bitnet::format::BnetFile::open(&m).unwrap();
        let want = bitnet::tokenizer::Tokenizer::from_container(&f)
            .unwrap()
            .decode(&ids)
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim_end_matches('\n'),
            want,
            "{dir}, {n} tokens"
        );
    }
}

#[test]
fn dump_logits_matches_golden_and_ppl_matches_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let m = packed("llama-bitlinear", tmp.path(), &[]);
    let gb = std::fs::read(fixture("llama-bitlinear").join("golden.safetensors")).unwrap();
    let g = safetensors::SafeTensors::deserialize(&gb).unwrap();
    let ids: Vec<String> = g
        .tensor("prompt2.ids")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()).to_string())
        .collect();
    let out = tmp.path().join("l.safetensors");
    let o = Command::cargo_bin("bitnet-run")
        .unwrap()
        .arg(&m)
        .args(["--ids", &ids.join(","), "--dump-logits"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lb = std::fs::read(&out).unwrap();
    let l = safetensors::SafeTensors::deserialize(&lb).unwrap();
    let got = l.tensor("logits").unwrap();
    assert_eq!(got.shape(), g.tensor("prompt2.logits").unwrap().shape());
    let worst = got
        .data()
        .chunks_exact(4)
        .zip(g.tensor("prompt2.logits").unwrap().data().chunks_exact(4))
        .map(|(a, b)| {
            (f32::from_le_bytes(a.try_into().unwrap()) - f32::from_le_bytes(b.try_into().unwrap()))
                .abs()
        })
        .fold(0f32, f32::max);
    assert!(
        worst <= 1e-4,
        "dumped logits differ from transformers by {worst}"
    );

    let o = Command::cargo_bin("bitnet-run")
        .unwrap()
        .arg(&m)
        .arg("--ppl")
        .arg(fixture("heldout.txt"))
        .args(["--ctx", "128", "--ppl-reference", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    let (p, r) = (
        j["perplexity"].as_f64().unwrap(),
        j["reference_perplexity"].as_f64().unwrap(),
    );
    assert!(p > 1.0 && p < 512.0, "perplexity {p}");
    assert!((p - r).abs() / r < 1e-3, "fast {p} vs reference {r}");
}

#[test]
fn run_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let m = packed("bitnet-latent", tmp.path(), &[]);
    let run = |args: &[&str]| {
        Command::cargo_bin("bitnet-run")
            .unwrap()
            .arg(&m)
            .args(args)
            .output()
            .unwrap()
    };
    let check = |o: std::process::Output, needle: &str| {
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert!(e.contains(needle), "expected {needle:?} in {e}");
    };
    check(run(&["--prompt", ""]), "the prompt is empty");
    // sampling settings that mean nothing (a NaN temperature had sampled from NaN
    // probabilities and printed garbage with exit 0)
    for (flag, v, msg) in [
        ("--temp", "nan", "is not a temperature"),
        ("--temp", "inf", "is not a temperature"),
        // a negative value after a space, which clap had taken for a flag
        ("--temp", "-1", "is not a temperature"),
        ("--top-p", "0", "is not a probability mass"),
        ("--top-p", "1.5", "is not a probability mass"),
    ] {
        check(run(&["--prompt", "In the beginning", flag, v]), msg);
    }
    // a directory or a missing file: said once, with what to do
    let missing = tmp.path().join("missing.bnet");
    for (path, msg) in [
        (fixture("bitnet-latent"), "is a directory, not a .bnet file"),
        (missing.clone(), "No such file or directory"),
    ] {
        for bin in ["bitnet-run", "bitnet-verify", "bitnet-inspect"] {
            let mut c = Command::cargo_bin(bin).unwrap();
            c.arg(&path);
            if bin != "bitnet-inspect" {
                c.args(["--prompt", "hi"]);
            }
            let o = c.output().unwrap();
            let e = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{bin}: {e}");
            assert!(e.contains(msg), "{bin}: {e}");
            let p = path.display().to_string();
            assert_eq!(e.matches(&p).count(), 1, "{bin}: the path once: {e}");
        }
    }
    check(
        run(&["--prompt", "hi", "--threads", "0"]),
        "--threads 0: give at least 1",
    );
    // options of another mode are refused, not silently ignored
    let text = fixture("heldout.txt");
    let text = text.to_str().unwrap();
    for (args, msg) in [
        (
            &["--ppl", text, "--dump-logits", "x.safetensors"][..],
            "cannot be used with",
        ),
        (&["--ppl", text, "--bench"][..], "cannot be used with"),
        (&["--prompt", "hi", "--bench"][..], "cannot be used with"),
        (&["--bench", "--temp", "0.5"][..], "cannot be used with"),
        (
            &["--prompt", "hi", "--ctx", "64"][..],
            "--ctx goes with --ppl",
        ),
        (
            &["--prompt", "hi", "--ppl-reference"][..],
            "--ppl-reference goes with --ppl",
        ),
        (
            &["--prompt", "hi", "--bench-decode", "4"][..],
            "--bench-decode goes with --bench",
        ),
        (
            &["--prompt", "hi", "--json"][..],
            "--json is the output of --ppl and --bench",
        ),
        (
            &["--prompt", "hi", "--force"][..],
            "--force overwrites the --dump-logits output",
        ),
        (&["--ppl", text, "--chat"][..], "cannot be used with"),
        (&["--bench", "--chat"][..], "cannot be used with"),
        (
            &["--prompt", "hi", "--top-k", "40", "--seed", "5"][..],
            "which --temp above 0 turns on",
        ),
    ] {
        check(run(args), msg);
    }
    // a prompt that fills the context still gets its one token (sampled from the last
    // position, never fed back); verify says how many tokens fit
    let full: Vec<String> = (0..256).map(|i| (i % 500).to_string()).collect();
    let o = run(&["--ids", &full.join(","), "-n", "5"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("generating at most 1 of the 5 tokens"), "{e}");
    let o = Command::cargo_bin("bitnet-verify")
        .unwrap()
        .arg(&m)
        .args(["--ids", &full[..250].join(",")])
        .output()
        .unwrap();
    check(o, "use at most --tokens 6");
    // a --ppl file that is not UTF-8
    let latin = tmp.path().join("latin1.txt");
    std::fs::write(&latin, b"caf\xe9 au lait").unwrap();
    check(
        run(&["--ppl", latin.to_str().unwrap()]),
        "not UTF-8 text (invalid byte at offset 3)",
    );
    // generation that would run past the context says so
    let o = run(&["--prompt", "In the beginning", "-n", "100000"]);
    assert!(o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("note: generating at most") && e.contains("context of"),
        "{e}"
    );
    let cores = std::thread::available_parallelism().unwrap().get();
    let many = (4 * cores + 1).to_string();
    check(run(&["--prompt", "hi", "--threads", &many]), "times the");
    // --dump-logits onto the model itself (with --force) is refused and the model kept: by
    // name, and through a link; a directory as the output is refused before any work
    let before = std::fs::read(&m).unwrap();
    let dump = |out: &Path| {
        run(&[
            "--ids",
            "1,2",
            "--dump-logits",
            out.to_str().unwrap(),
            "--force",
        ])
    };
    check(dump(&m), "--dump-logits writes a safetensors file");
    let alias = tmp.path().join("alias.safetensors");
    std::os::unix::fs::symlink(&m, &alias).unwrap();
    check(dump(&alias), "is the input file");
    assert_eq!(std::fs::read(&m).unwrap(), before);
    let dir = tmp.path().join("d.safetensors");
    std::fs::create_dir(&dir).unwrap();
    check(
        dump(&dir),
        "is a directory; give the path of the output file",
    );
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    check(
        run(&["--ppl", empty.to_str().unwrap()]),
        "the file is empty; perplexity needs",
    );
    check(
        run(&["--ids", "1,600"]),
        "token id 600 is outside the vocabulary",
    );
    let long: Vec<String> = (0..300).map(|i| (i % 500).to_string()).collect();
    check(
        run(&["--ids", &long.join(",")]),
        "longer than the model's context of 256",
    );
    let bare = tmp.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    for f in [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ] {
        std::fs::copy(fixture("bitnet-latent").join(f), bare.join(f)).unwrap();
    }
    let nt = tmp.path().join("nt.bnet");
    assert!(Command::cargo_bin("bitnet-pack")
        .unwrap()
        .arg(&bare)
        .arg(&nt)
        .args(["--no-tokenizer", "-q"])
        .output()
        .unwrap()
        .status
        .success());
    let o = Command::cargo_bin("bitnet-run")
        .unwrap()
        .arg(&nt)
        .args(["--prompt", "hi"])
        .output()
        .unwrap();
    check(o, "no tokenizer.json");
}

/// --reference runs the reference on another model: the original checkpoint (packed afresh),
/// or the same model with its full-precision head, which measures what `--lm-head i8` costs.
#[test]
fn verify_against_another_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let m = packed("bitnet-latent", tmp.path(), &[]);
    let o = Command::cargo_bin("bitnet-verify")
        .unwrap()
        .arg(&m)
        .arg("--reference")
        .arg(fixture("bitnet-latent"))
        .args(["--prompt", "Blessed are the", "--tokens", "4", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let i8m = tmp.path().join("i8.bnet");
    let o = Command::cargo_bin("bitnet-pack")
        .unwrap()
        .arg(fixture("bitnet-latent"))
        .arg(&i8m)
        .args(["--lm-head", "i8", "-q"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let o = Command::cargo_bin("bitnet-verify")
        .unwrap()
        .arg(&i8m)
        .arg("--reference")
        .arg(&m)
        .args(["--prompt", "Blessed are the", "--tokens", "4", "--json"])
        .output()
        .unwrap();
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    let kl = j["summary"]["kl_mean"].as_f64().unwrap();
    assert!(kl > 0.0 && kl < 1e-3, "int8 head KL {kl}");
    assert_eq!(o.status.code(), Some(0));
}

/// A container that is self-consistent (every checksum right) but holds invalid packed codes
/// (T2 code 3; TL index 14 or 15, or a negated zero) is refused by the runner, and flagged by
/// verify, instead of being run with a weight of +2 or garbage.
#[test]
fn runner_refuses_invalid_codes_even_with_valid_checksums() {
    type Damage = fn(&mut [u8]);
    let cases: [(&[&str], Damage, &str); 3] = [
        // four fields of code 3
        (
            &["--ternary-layout", "t2"],
            |d| d[5] = 0xff,
            "invalid code 3",
        ),
        // index 14 in both nibbles of row 0's first pair
        (
            &["--ternary-layout", "tl"],
            |d| d[32] = 0xEE,
            "invalid TL codes",
        ),
        // sign bits over index 0 (a negated zero)
        (
            &["--ternary-layout", "tl"],
            |d| {
                d[0] = 0xff;
                d[32..160].fill(0);
            },
            "invalid TL codes",
        ),
    ];
    for (args, damage, verify_says) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let m = packed("bitnet-latent", tmp.path(), args);
        let f = bitnet::format::BnetFile::open(&m).unwrap();
        let bad = tmp.path().join("bad.bnet");
        let mut w =
            bitnet::format::bnet::Writer::new(std::fs::File::create(&bad).unwrap(), &bad).unwrap();
        for e in &f.index.entries {
            let mut data = f.data(e).to_vec();
            if e.name == "model.layers.1.mlp.up_proj.weight" {
                damage(&mut data);
            }
            w.tensor(&e.name, e.dtype, &e.shape, e.scale, &data)
                .unwrap();
        }
        w.finish(&f.index.meta).unwrap();
        let o = Command::cargo_bin("bitnet-run")
            .unwrap()
            .arg(&bad)
            .args(["--ids", "0,42"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&o.stderr)
            .contains("model.layers.1.mlp.up_proj.weight holds invalid packed codes"));
        // unpacking refuses them too, leaving nothing behind (it had dequantized them)
        for out in [tmp.path().join("u.safetensors"), tmp.path().join("udir")] {
            let o = Command::cargo_bin("bitnet-pack")
                .unwrap()
                .args([&bad, &out])
                .output()
                .unwrap();
            let e = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
            assert!(e.contains("holds invalid packed codes"), "{e}");
            assert!(!out.exists());
        }
        // so does the GGUF export, naming the file
        let gg = tmp.path().join("u.gguf");
        let o = Command::cargo_bin("bitnet-pack")
            .unwrap()
            .args([&bad, &gg])
            .args(["--gguf-type", "i2_s"])
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert!(
            e.contains(&format!("{}: ", bad.display())) && e.contains("invalid packed codes"),
            "{e}"
        );
        assert!(!gg.exists());
        let o = Command::cargo_bin("bitnet-inspect")
            .unwrap()
            .arg(&bad)
            .arg("--verify")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains(&format!("model.layers.1.mlp.up_proj.weight: {verify_says}")),
            "{out}"
        );
    }
}

/// The fixture's chat template renders as transformers' `apply_chat_template` would (BOS from
/// the template itself, no second BOS from the tokenizer), and `--chat` generates from it.
#[test]
fn chat_template_renders_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let m = packed("bitnet-latent", tmp.path(), &[]);
    let f = bitnet::format::BnetFile::open(&m).unwrap();
    let t = bitnet::tokenizer::ChatTemplate::from_container(&f)
        .unwrap()
        .expect("the fixture has a chat template");
    let text = t.render(&[("user", "Who made the heaven?")], true).unwrap();
    assert_eq!(
        text,
        "<|begin_of_text|>user: Who made the heaven?\nassistant:"
    );
    let tok = bitnet::tokenizer::Tokenizer::from_container(&f).unwrap();
    let ids = tok.encode_raw(&text).unwrap();
    assert_eq!(ids[0], 0);
    assert_ne!(ids[1], 0, "BOS must not be doubled");
    let o = Command::cargo_bin("bitnet-run")
        .unwrap()
        .arg(&m)
        .args(["--prompt", "Who made the heaven?", "--chat", "-n", "8"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!o.stdout.is_empty());
    // the model really sees the templated ids: one logits row per templated token, not per
    // plain-prompt token
    let plain = tok.encode("Who made the heaven?").unwrap();
    assert_ne!(plain.len(), ids.len());
    let dump = tmp.path().join("chat-logits.safetensors");
    let o = Command::cargo_bin("bitnet-run")
        .unwrap()
        .arg(&m)
        .args([
            "--prompt",
            "Who made the heaven?",
            "--chat",
            "--dump-logits",
        ])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&dump).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("logits").unwrap().shape()[0], ids.len());
    // --chat needs a prompt (not ids) and a model with a template
    let o = Command::cargo_bin("bitnet-run")
        .unwrap()
        .arg(&m)
        .args(["--ids", "1,2", "--chat"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--chat wraps --prompt"));
    // the same model without a template in its tokenizer_config.json
    let dir = tmp.path().join("no-template");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(fixture("bitnet-latent")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let tc = dir.join("tokenizer_config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&tc).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("chat_template").unwrap();
    std::fs::write(&tc, serde_json::to_vec(&v).unwrap()).unwrap();
    let bare = tmp.path().join("bare.bnet");
    Command::cargo_bin("bitnet-pack")
        .unwrap()
        .arg(&dir)
        .arg(&bare)
        .arg("--quiet")
        .assert()
        .success();
    let o = Command::cargo_bin("bitnet-run")
        .unwrap()
        .arg(&bare)
        .args(["--prompt", "hi", "--chat"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no chat template"));
}

/// Templates written for Python's Jinja2 render: string methods and `tojson`, as real chat
/// templates use them (they had been refused).
#[test]
fn chat_templates_with_python_methods_render() {
    let t = bitnet::tokenizer::ChatTemplate::new(
        "{% for m in messages %}{% if m.content.startswith('  ') %}{{ m.role.upper() }}: \
         {{ m.content.strip() }}|{{ m | tojson }}{% endif %}{% endfor %}",
    );
    let text = t.render(&[("user", "  hi  ")], true).unwrap();
    assert_eq!(text, "USER: hi|{\"role\":\"user\",\"content\":\"  hi  \"}");
}

/// A chat template is untrusted input: one that would loop for ages runs out of fuel instead.
#[test]
fn runaway_chat_template_is_stopped() {
    let t = bitnet::tokenizer::ChatTemplate::new(
        "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
    );
    let e = t
        .render(&[("user", "hi")], true)
        .expect_err("must not render");
    assert!(
        e.to_string().contains("chat template cannot be rendered"),
        "{e}"
    );
    assert!(e.to_string().contains("ran out of fuel"), "{e}");
}

/// `BITNET_PREFETCH` forces how decode prefetches its weights (each mode runs here whatever
/// this CPU's default): both generate the same text from TL and T2 files, `--bench` reports
/// the mode, and a value that is not a mode is an error (exit 2) from both binaries.
#[test]
fn prefetch_modes_decode_the_same_and_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |m: &Path, mode: &str, args: &[&str]| {
        let o = Command::cargo_bin("bitnet-run")
            .unwrap()
            .env("BITNET_PREFETCH", mode)
            .arg(m)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    };
    for layout in ["tl", "t2"] {
        let m = packed("bitnet-latent", tmp.path(), &["--ternary-layout", layout]);
        let gen = ["--prompt", "In the beginning", "-n", "12", "--threads", "2"];
        assert_eq!(run(&m, "l2", &gen), run(&m, "nta", &gen), "{layout}");
        for mode in ["l2", "nta"] {
            let bench = [
                "--bench",
                "--bench-prompt",
                "2",
                "--bench-decode",
                "2",
                "--json",
            ];
            let r: Value = serde_json::from_slice(&run(&m, mode, &bench)).unwrap();
            assert_eq!(r["prefetch"], mode, "{layout}");
        }
    }
    let m = tmp.path().join("bitnet-latent.bnet");
    for bin in ["bitnet-run", "bitnet-verify"] {
        let msg = "BITNET_PREFETCH=\"t0\" is not a prefetch mode; use l2 or nta";
        env_is_refused(bin, &m, ("BITNET_PREFETCH", "t0"), msg);
    }
}

/// `bin` on model `m` (`--ids 0`) with the environment variable `var` set to `value` exits 2
/// with `msg` in its error.
fn env_is_refused(bin: &str, m: &Path, (var, value): (&str, &str), msg: &str) {
    let o = Command::cargo_bin(bin)
        .unwrap()
        .env(var, value)
        .arg(m)
        .args(["--ids", "0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{bin} {var}={value}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(msg), "{bin} {var}={value}: {err}");
}

/// `bitnet-run M --bench --json` on one thread with `prompt` and `decode` tokens: its report.
fn bench_json(m: &Path, prompt: usize, decode: usize) -> Value {
    let o = Command::cargo_bin("bitnet-run")
        .unwrap()
        .arg(m)
        .args(["--bench", "--bench-prompt", &prompt.to_string()])
        .args(["--bench-decode", &decode.to_string()])
        .args(["--threads", "1", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `--bench --json` reports the bytes a decode step streams (every packed projection plus the
/// head, counted here from the index independently; the f32 KV cache, from the config) and a
/// bandwidth measured on them;
/// a benchmark that cannot run is an error, not a report of zeros.
#[test]
fn bench_reports_bytes_and_bandwidth() {
    let tmp = tempfile::tempdir().unwrap();
    for (extra, head) in [
        (&[][..], "model.embed_tokens.weight"),
        (&["--lm-head", "i8"][..], "lm_head.weight"),
    ] {
        let m = packed("bitnet-latent", tmp.path(), extra);
        let f = bitnet::format::BnetFile::open(&m).unwrap();
        let expect: u64 = f
            .index
            .entries
            .iter()
            .filter(|e| e.dtype.is_packed() || e.name == head)
            .map(|e| e.len)
            .sum();
        let r = bench_json(&m, 5, 3);
        assert_eq!(r["weight_bytes_per_decode_token"], expect, "{extra:?}");
        // decode steps at positions 5, 6, 7 read 6, 7, 8 positions of keys and values
        let c = bitnet::runner::weights::Weights::load(&f).unwrap().cfg;
        let per_pos = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4;
        assert_eq!(
            r["kv_cache_bytes_per_decode_token"],
            7 * per_pos,
            "{extra:?}"
        );
        // the cache held: the prompt's 5 positions and 3 decoded
        assert_eq!(r["kv_cache_bytes"], 8 * per_pos, "{extra:?}");
        assert_eq!(r["prompt_tokens"], 5);
        assert_eq!(r["decode_tokens"], 3);
        assert_eq!(r["threads"], 1);
        for k in [
            "prompt_tokens_per_s",
            "decode_tokens_per_s",
            "decode_gb_per_s",
            "read_bandwidth_gb_per_s",
            "decode_share_of_bandwidth",
        ] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{k}: {r}");
        }
    }
    let m = tmp.path().join("bitnet-latent.bnet");
    let o = Command::cargo_bin("bitnet-run")
        .unwrap()
        .arg(&m)
        .args(["--bench", "--bench-decode", "0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--bench-decode (0)"));
    // more threads than cores: it runs (correctly) but says it will be slow
    let cores = std::thread::available_parallelism().unwrap().get();
    let o = Command::cargo_bin("bitnet-run")
        .unwrap()
        .arg(&m)
        .args([
            "--bench",
            "--bench-prompt",
            "3",
            "--bench-decode",
            "2",
            "--json",
        ])
        .args(["--threads", &(cores + 1).to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let warning = format!("--threads {} is more than the {cores} cores", cores + 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains(&warning));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["threads"], cores + 1);
}

/// `--lm-head q4`: the fast runner (int8 activations against the Q4 head) passes verify
/// against the reference reading the same stored head, on every kernel path, tied and untied;
/// against the original checkpoint the 4-bit head costs a measurable but bounded KL (the
/// trade-off the README states), where int8 costs far less.
#[test]
fn q4_head_verifies_and_its_cost_is_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in ["bitnet-latent", "llama-bitlinear", "onebitllm-256"] {
        let prompt = golden_json(dir)["prompts"][1].as_str().unwrap().to_string();
        let mut kl = Vec::new();
        for head in ["q4", "i8"] {
            let sub = tmp.path().join(head);
            std::fs::create_dir_all(&sub).unwrap();
            let m = packed(dir, &sub, &["--lm-head", head]);
            let f = bitnet::format::BnetFile::open(&m).unwrap();
            let want = if head == "q4" { "Q4" } else { "I8" };
            assert_eq!(f.index.get("lm_head.weight").unwrap().dtype.name(), want);
            // TL projections (the default layout) make it 1.2 whatever the head
            assert_eq!(f.index.version.1, 2);
            for kern in bitnet::kernels::Kernel::all_available() {
                let o = Command::cargo_bin("bitnet-verify")
                    .unwrap()
                    .env("BITNET_KERNEL", kern.name())
                    .arg(&m)
                    .args(["--prompt", &prompt, "--tokens", "8"])
                    .output()
                    .unwrap();
                assert_eq!(o.status.code(), Some(0), "{dir} {head} {}", kern.name());
            }
            let o = Command::cargo_bin("bitnet-verify")
                .unwrap()
                .arg(&m)
                .arg("--reference")
                .arg(fixture(dir))
                .args(["--prompt", &prompt, "--tokens", "8", "--json"])
                .output()
                .unwrap();
            let r: Value = serde_json::from_slice(&o.stdout).unwrap();
            kl.push(r["summary"]["kl_mean"].as_f64().unwrap());
        }
        let (q4, i8) = (kl[0], kl[1]);
        assert!(q4 > 0.0 && q4 < 1e-2, "{dir}: q4 head KL {q4}");
        assert!(i8 < q4 / 10.0, "{dir}: i8 head KL {i8} vs q4 {q4}");
    }
}

/// Decode reads its weights in place from the mapped file: right after `--bench` decodes a
/// synthetic model whose decode streams ~84 MB of weights, those bytes are resident as mapped
/// file pages and the anonymous memory (heap, KV cache, buffers) is far below them. A runner
/// that copied the weights to the heap would hold them as anonymous memory. Linux only (the
/// report comes from /proc).
#[cfg(target_os = "linux")]
#[test]
fn decode_reads_weights_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mid");
    let spec = bitnet::synth::SynthSpec {
        hidden: 1024,
        intermediate: 2816,
        layers: 8,
        heads: 16,
        kv_heads: 4,
        vocab: 32000,
        tied: true,
        packed: true,
        silu: false,
    };
    bitnet::synth::write_checkpoint(&dir, &spec, 3).unwrap();
    let m = tmp.path().join("mid.bnet");
    let o = Command::cargo_bin("bitnet-pack")
        .unwrap()
        .arg(&dir)
        .arg(&m)
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = bench_json(&m, 8, 4);
    let weights = r["weight_bytes_per_decode_token"].as_u64().unwrap();
    let kv = r["kv_cache_bytes"].as_u64().unwrap();
    let c = &spec;
    let per_pos = 2 * c.layers * c.kv_heads * (c.hidden / c.heads) * 4;
    assert_eq!(kv, 12 * per_pos);
    assert!(weights > 80_000_000, "{r}");
    let mem = &r["resident_after_decode"];
    let (anon, file) = (mem["anon_bytes"].as_u64(), mem["file_bytes"].as_u64());
    let (anon, file) = (anon.unwrap(), file.unwrap());
    assert!(file >= weights, "weights not resident as file pages: {r}");
    assert!(
        anon < kv + weights / 2,
        "weights copied to anonymous memory? {r}"
    );
    // VmRSS also counts shared memory (RssShmem)
    assert!(mem["total_bytes"].as_u64().unwrap() >= anon + file, "{r}");
}

/// A reader that closes the pipe early (`bitnet-inspect m.bnet --tensors | head`) ends every
/// binary quietly with exit 2: no panic, no error line. (They had panicked with exit 101 in
/// `println!`.) The pipe's read end is closed before the binary starts, so every write fails.
#[test]
fn closed_stdout_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let m = packed("llama-bitlinear", tmp.path(), &[]);
    let gguf = tmp.path().join("m.gguf");
    let heldout = fixture("heldout.txt");
    let runs: [(&str, Vec<&std::ffi::OsStr>); 5] = [
        ("bitnet-inspect", vec![m.as_ref(), "--tensors".as_ref()]),
        (
            "bitnet-run",
            vec![m.as_ref(), "--ppl".as_ref(), heldout.as_ref()],
        ),
        (
            "bitnet-run",
            vec![
                m.as_ref(),
                "--prompt".as_ref(),
                "The".as_ref(),
                "-n".as_ref(),
                "4".as_ref(),
            ],
        ),
        (
            "bitnet-verify",
            vec![
                m.as_ref(),
                "--prompt".as_ref(),
                "The".as_ref(),
                "--tokens".as_ref(),
                "2".as_ref(),
            ],
        ),
        (
            "bitnet-pack",
            vec![
                m.as_ref(),
                gguf.as_ref(),
                "--gguf-type".as_ref(),
                "i2_s".as_ref(),
                "--json".as_ref(),
            ],
        ),
    ];
    for (bin, args) in runs {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = std::process::Command::new(assert_cmd::cargo::cargo_bin(bin))
            .args(&args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bin} {args:?}: {e}");
        assert!(
            !e.contains("panicked") && !e.contains("error"),
            "{bin} {args:?}: {e}"
        );
    }
    // a conversion is in place before its report is printed: a reader that stops early does
    // not cost it (the pack had been committed after its --json report, and lost)
    assert!(gguf.exists());
    let out = tmp.path().join("again.bnet");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = std::process::Command::new(assert_cmd::cargo::cargo_bin("bitnet-pack"))
        .arg(fixture("llama-bitlinear"))
        .arg(&out)
        .arg("--json")
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(out.exists());
}

/// Generation stops at generation_config.json's end-of-sequence ids as well as config.json's
/// (chat models list their end of turn only there); before, the stored file was never read.
#[test]
fn generation_stops_at_generation_config_eos() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gc");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(fixture("bitnet-packed")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let gen = |m: &Path| {
        let o = Command::cargo_bin("bitnet-run")
            .unwrap()
            .arg(m)
            .args(["--prompt", "In the beginning", "-n", "12"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let plain = gen(&packed("bitnet-packed", tmp.path(), &[]));
    let comma = plain
        .find(',')
        .expect("the fixture's greedy text has a comma");
    // 13 is "," in the fixture's tokenizer
    // an eos id outside the vocabulary is refused at packing, naming the file
    let gc = dir.join("generation_config.json");
    std::fs::write(&gc, r#"{"eos_token_id": [1, 9999]}"#).unwrap();
    let o = Command::cargo_bin("bitnet-pack")
        .unwrap()
        .args([&dir, &tmp.path().join("bad.bnet")])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("generation_config.json: eos_token_id 9999 is outside the vocabulary"),
        "{e}"
    );
    std::fs::write(&gc, r#"{"eos_token_id": [1, 13]}"#).unwrap();
    let m = tmp.path().join("gc.bnet");
    Command::cargo_bin("bitnet-pack")
        .unwrap()
        .args([&dir, &m])
        .arg("--quiet")
        .assert()
        .success();
    let stopped = gen(&m);
    assert_eq!(stopped.trim_end(), plain[..comma].trim_end(), "{plain:?}");
}
