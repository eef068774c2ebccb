#!/usr/bin/env python3
"""Times llama.cpp (through llama-cpp-python) on a GGUF file the way `bitnet-run --bench` times
our runner: a prompt of P random token ids evaluated as one batch, then D tokens decoded one at
a time, on T threads. Prints tokens/s as JSON.

    ~/.cache/bitnet-tools/interop-venv/bin/python tests/interop/bench_llama_cpp.py MODEL.gguf --threads 2

(tests/interop/run.sh builds that environment.) Decode feeds fixed token ids instead of sampling:
the time per token does not depend on which token it is.
"""
import argparse
import json
import time

import llama_cpp
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--prompt", type=int, default=128)
ap.add_argument("--decode", type=int, default=128)
a = ap.parse_args()

llm = llama_cpp.Llama(
    model_path=a.model, n_ctx=a.prompt + a.decode + 8, n_batch=a.prompt, n_ubatch=a.prompt,
    n_threads=a.threads, n_threads_batch=a.threads, logits_all=False, verbose=False,
)
ids = np.random.default_rng(0).integers(2, llm.n_vocab(), size=a.prompt + a.decode).tolist()
llm.eval(ids[:8])  # warm-up: page in the weights
llm.reset()
t0 = time.perf_counter()
llm.eval(ids[: a.prompt])
t1 = time.perf_counter()
for tok in ids[a.prompt :]:
    llm.eval([tok])
t2 = time.perf_counter()
print(json.dumps({
    "tool": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}",
    "model": a.model, "threads": a.threads,
    "prompt_tokens": a.prompt, "prompt_tokens_per_s": a.prompt / (t1 - t0),
    "decode_tokens": a.decode, "decode_tokens_per_s": a.decode / (t2 - t1),
}))
