#!/usr/bin/env python3
"""Writes tests/data/ggml_blocks.json: TQ1_0 and TQ2_0 blocks encoded by gguf-py's own
quantizer (llama.cpp's Python package), the independent oracle for our codecs in tests/gguf.rs.

    ~/.cache/bitnet-tools/interop-venv/bin/python tests/interop/make_block_goldens.py

Made with gguf 0.19.0 and numpy 2.4.6 (tests/interop/requirements.txt).
"""
import json
from pathlib import Path

import gguf
import numpy as np

rng = np.random.default_rng(7)
rows = []
# two rows of two 256-blocks: random ternary, then edge patterns (all -1, all +1 / all 0)
vals = rng.integers(-1, 2, size=(2, 512)).astype(np.int8)
vals[1, :256] = -1
vals[1, 256:] = np.where(np.arange(256) % 2 == 0, 1, 0)
d = np.float32(0.375)  # exact in fp16
x = vals.astype(np.float32) * d
out = {"d": float(d), "values": vals.tolist()}
for t in ("TQ1_0", "TQ2_0"):
    q = gguf.quants.quantize(x, gguf.GGMLQuantizationType[t])
    out[t] = [bytes(r).hex() for r in q]
Path(__file__).resolve().parents[1].joinpath("data", "ggml_blocks.json").write_text(json.dumps(out) + "\n")
