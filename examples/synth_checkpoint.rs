//! Writes a synthetic checkpoint with random weights.
//!
//! cargo run --release --example synth_checkpoint -- DIR [2b4t|2b4t-silu|tiny-odd] [packed]

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or_else(|| {
        anyhow::anyhow!("usage: synth_checkpoint DIR [2b4t|2b4t-silu|tiny-odd] [packed]")
    })?);
    let mut spec = match args.next().as_deref() {
        None | Some("2b4t") => bitnet::synth::SynthSpec::bitnet_2b4t(),
        Some("tiny-odd") => bitnet::synth::SynthSpec::tiny_odd(),
        Some("2b4t-silu") => bitnet::synth::SynthSpec {
            silu: true,
            ..bitnet::synth::SynthSpec::bitnet_2b4t()
        },
        Some(other) => anyhow::bail!("unknown shape {other:?}: use 2b4t, 2b4t-silu or tiny-odd"),
    };
    spec.packed = args.next().as_deref() == Some("packed");
    bitnet::synth::write_checkpoint(&dir, &spec, 42)?;
    eprintln!("wrote {}", dir.display());
    Ok(())
}
