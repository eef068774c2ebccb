#!/usr/bin/env bash
# Interleaved side-by-side benchmark: bitnet-run and llama.cpp (through llama-cpp-python) on the
# same 2B-4T-shaped files, alternating so that this VM's minute-to-minute swings in speed hit
# both runners alike. Prints one line per run: "RUNNER FILE tTHREADS {json}"; summarize with
#   python3 tests/interop/summarize_bench.py OUT [OUT ...]
# Files (made by the commands in README.md, "Side by side with llama.cpp"):
#   $DIR/b2b4t-silu{,-i8,-q4}.bnet (T2 layout), $DIR/b2b4t-silu-q4-tl.bnet (TL, the default),
#   $DIR/b2b4t-silu.{tq2_0,tq2_0-q,tq2_0-q4e,tq1_0}.gguf
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${DIR:-/tmp}
REPS=${REPS:-3}
PY=${PY:-$HOME/.cache/bitnet-tools/interop-venv/bin/python}
ours() { echo "ours $1 t$2 $(./target/release/bitnet-run "$DIR/$1.bnet" --bench --threads "$2" --json | tr -d '\n ')"; }
llama() { echo "llama $1 t$2 $("$PY" tests/interop/bench_llama_cpp.py "$DIR/b2b4t-silu.$1.gguf" --threads "$2" 2>/dev/null | tr -d '\n ')"; }
# every file into the page cache first: a run that reads its file from disk during the prompt
# measures the disk (the bf16-head file once prompted at 51 tokens/s cold, 115-134 warm)
cat "$DIR"/b2b4t-silu*.bnet "$DIR"/b2b4t-silu.*.gguf > /dev/null || {
  echo "side_by_side.sh: a file is missing in $DIR; make them with the commands in README.md, 'Side by side with llama.cpp'" >&2
  exit 1
}
for t in 1 2; do
  for _ in $(seq "$REPS"); do
    ours b2b4t-silu-q4-tl "$t"; llama tq2_0-q4e "$t"; ours b2b4t-silu-q4 "$t"; llama tq2_0-q "$t"; ours b2b4t-silu-i8 "$t"
  done
done
for t in 1 2; do ours b2b4t-silu "$t"; llama tq2_0 "$t"; llama tq1_0 "$t"; done
