#!/usr/bin/env python3
"""Re-quantizes a GGUF with llama.cpp's own llama-quantize logic (through llama-cpp-python's
`llama_model_quantize`), e.g. to get llama-quantize's default token-embedding type for TQ2_0:

    ~/.cache/bitnet-tools/interop-venv/bin/python tests/interop/llama_quantize.py IN.gguf OUT.gguf 37

The third argument is llama.cpp's LLAMA_FTYPE (36 TQ1_0, 37 TQ2_0). An optional fourth is the
ggml type id for token_embd (2 Q4_0, 8 Q8_0, 14 Q6_K; default: llama-quantize's choice), as
`llama-quantize --token-embedding-type` sets it.
"""
import ctypes
import sys

import llama_cpp

src, dst, ftype = sys.argv[1], sys.argv[2], int(sys.argv[3])
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = ftype
p.allow_requantize = True
p.nthread = 2
if len(sys.argv) > 4:
    p.token_embedding_type = int(sys.argv[4])
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
sys.exit(f"llama_model_quantize failed ({rc})" if rc else 0)
