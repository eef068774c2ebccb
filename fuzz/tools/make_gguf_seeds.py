#!/usr/bin/env python3
"""Writes the GGUF seeds of fuzz target gguf_import (fuzz/corpus/gguf_import/mini-*.gguf) with
gguf-py, llama.cpp's own writer: tiny complete models that bitnet-pack imports.

    ~/.cache/bitnet-tools/interop-venv/bin/python fuzz/tools/make_gguf_seeds.py fuzz/corpus/gguf_import

(tests/interop/run.sh builds that environment.)
"""
import sys
from pathlib import Path

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType
H, FF, HEADS, KV, VOCAB = 256, 256, 4, 2, 8
HD = H // HEADS
rng = np.random.default_rng(1)


def ternary(rows, cols, ty):
    x = rng.integers(-1, 2, size=(rows, cols)).astype(np.float32) * np.float32(0.25)
    return gguf.quants.quantize(x, ty) if ty not in (Q.F16, Q.F32) else x.astype(np.float16 if ty == Q.F16 else np.float32)


def write(path, arch, ty, sub_norms, act):
    w = gguf.GGUFWriter(path, arch)
    w.add_uint32(f"{arch}.vocab_size", VOCAB)
    w.add_context_length(64)
    w.add_embedding_length(H)
    w.add_block_count(1)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(HD)
    if act:
        w.add_string(f"{arch}.hidden_activation", act)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(["<s>", "</s>", "a", "b", "c", "Ġ", "ab", "Ġa"])
    w.add_token_types([3, 3, 1, 1, 1, 1, 1, 1])
    w.add_token_merges(["a b", "Ġ a"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_add_bos_token(True)
    ones = np.ones(H, dtype=np.float32)
    w.add_tensor("token_embd.weight", rng.standard_normal((VOCAB, H)).astype(np.float16))
    w.add_tensor("blk.0.attn_norm.weight", ones)
    for name, rows, cols in [("attn_q", H, H), ("attn_k", KV * HD, H), ("attn_v", KV * HD, H), ("attn_output", H, H)]:
        t = ternary(rows, cols, ty)
        w.add_tensor(f"blk.0.{name}.weight", t, raw_dtype=ty if ty not in (Q.F16, Q.F32) else None)
    if sub_norms:
        w.add_tensor("blk.0.attn_sub_norm.weight", ones)
    w.add_tensor("blk.0.ffn_norm.weight", ones)
    for name, rows, cols in [("ffn_gate", FF, H), ("ffn_up", FF, H), ("ffn_down", H, FF)]:
        t = ternary(rows, cols, ty)
        w.add_tensor(f"blk.0.{name}.weight", t, raw_dtype=ty if ty not in (Q.F16, Q.F32) else None)
    if sub_norms:
        w.add_tensor("blk.0.ffn_sub_norm.weight", np.ones(FF, dtype=np.float32))
    w.add_tensor("output_norm.weight", ones)
    if arch == "llama":
        w.add_tensor("output.weight", rng.standard_normal((VOCAB, H)).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
write(out / "mini-llama-tq1_0.gguf", "llama", Q.TQ1_0, False, None)
write(out / "mini-bitnet-tq2_0.gguf", "bitnet", Q.TQ2_0, True, "silu")
