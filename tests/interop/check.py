#!/usr/bin/env python3
"""GGUF interop proof against the real tools. Run by run.sh (which provides the environment):

    check.py BIN_DIR WORK_DIR

For each fixture family that mainline llama.cpp runs correctly (SiLU: llama-architecture
ternary, and 1bitLLM-style BitNet with sub-norms and tied embeddings) and for TQ2_0 and TQ1_0:

1. bitnet-pack exports the fixture to GGUF.
2. gguf-py (llama.cpp's own Python reader) reads the file: every tensor's name, type, dims,
   byte size and offset, and every metadata key, equal what our reader (bitnet-inspect) says.
3. llama.cpp (llama-cpp-python) loads and evaluates it on the fixture prompts; its logits are
   compared with our runner's on the same token ids (tolerances below).
4. gguf-py's writer re-encodes the projections with its own TQ quantizer (and once as F16, the
   converter's default type) into a new file; bitnet-pack imports it, and the ternary codes
   and scales equal those of importing our own export.

Tolerances. llama.cpp quantizes activations to int8 per 256-value block (Q8_K), our runner and
transformers per token, so logits are close but not bit-identical. Measured on these fixtures
(see the printed table): mean KL about 1e-4 nats. We require mean KL <= 2e-3 and max KL <= 2e-2
per fixture, and the same top-1 token wherever our top-1/top-2 margin exceeds 0.5 logits (the
band rounding-boundary flips can move a logit on small trained models).
"""
import json
import subprocess
import sys
from pathlib import Path

import gguf
import llama_cpp
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BIN, WORK = Path(sys.argv[1]), Path(sys.argv[2])
FIXTURES = ["llama-bitlinear-256", "onebitllm-256"]
TYPES = ["tq2_0", "tq1_0"]
KL_MEAN_MAX, KL_MAX_MAX, MARGIN = 2e-3, 2e-2, 0.5


def sh(*args) -> str:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"FAILED: {' '.join(map(str, args))}\n{r.stderr}")
    return r.stdout


def our_logits(bnet: Path, ids: list[int]) -> np.ndarray:
    out = WORK / "ours.safetensors"
    sh(BIN / "bitnet-run", bnet, "--ids", ",".join(map(str, ids)), "--dump-logits", out, "--force")
    raw = out.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    h = json.loads(raw[8 : 8 + n])["logits"]
    a, b = h["data_offsets"]
    return np.frombuffer(raw[8 + n + a : 8 + n + b], dtype="<f4").reshape(h["shape"])


def llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_batch=256, n_threads=2, logits_all=True, verbose=False)
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: llm.n_tokens], dtype=np.float64)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(ours: np.ndarray, theirs: np.ndarray) -> dict:
    lp, lq = log_softmax(ours.astype(np.float64)), log_softmax(theirs)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    top = np.sort(ours, axis=-1)
    margin = top[:, -1] - top[:, -2]
    same = ours.argmax(-1) == theirs.argmax(-1)
    return {
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "max_abs": float(np.abs(ours - theirs).max()),
        "top1": float(same.mean()),
        "top1_clear_miss": int((~same & (margin > MARGIN)).sum()),
    }


def check_reader(path: Path) -> None:
    """gguf-py and our reader agree on every tensor and key."""
    ours = json.loads(sh(BIN / "bitnet-inspect", path, "--json", "--tensors"))
    r = gguf.GGUFReader(path)
    theirs = {t.name: (t.tensor_type.name, [int(x) for x in t.shape], int(t.n_bytes), int(t.data_offset)) for t in r.tensors}
    mine = {t["name"]: (t["type"], t["dims"], t["bytes"], t["offset"]) for t in ours["tensors"]}
    if theirs != mine:
        diff = {k: (mine.get(k), theirs.get(k)) for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
        sys.exit(f"FAILED: {path.name}: gguf-py and bitnet-inspect disagree on tensors: {diff}")
    keys = {k for k in r.fields if not k.startswith("GGUF.")}
    if keys != set(ours["metadata"]):
        sys.exit(f"FAILED: {path.name}: metadata keys differ: {keys ^ set(ours['metadata'])}")
    for k, v in ours["metadata"].items():
        f = r.fields[k]
        if f.types[0] in (gguf.GGUFValueType.ARRAY,):
            continue
        got = f.contents()
        if isinstance(v, float):
            ok = abs(got - v) <= 1e-6 * max(1.0, abs(v))
        elif isinstance(v, str):
            ok = got == v
        else:
            ok = got == v
        if not ok:
            sys.exit(f"FAILED: {path.name}: key {k}: gguf-py reads {got!r}, we read {v!r}")


def rewrite_with_gguf_py(src: Path, dst: Path, proj_type) -> None:
    """Re-writes `src` with gguf-py's GGUFWriter, re-quantizing the ternary projections with
    gguf-py's own quantizer (`proj_type` TQ1_0/TQ2_0) or storing them as F16."""
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name in ("general.architecture", "general.alignment"):
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)
    Q = gguf.GGMLQuantizationType
    for t in r.tensors:
        if t.tensor_type in (Q.TQ1_0, Q.TQ2_0):
            x = gguf.quants.dequantize(t.data, t.tensor_type)
            if proj_type == Q.F16:
                w.add_tensor(t.name, x.astype(np.float16), raw_dtype=Q.F16)
            else:
                w.add_tensor(t.name, gguf.quants.quantize(x, proj_type), raw_dtype=proj_type)
        else:
            w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tensor_facts(bnet: Path) -> dict:
    j = json.loads(sh(BIN / "bitnet-inspect", bnet, "--json", "--tensors"))
    return {t["name"]: (t["blake3"], t.get("scale")) for t in j["tensors"] if not t["name"].startswith("file:")}


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    print(f"llama-cpp-python {llama_cpp.__version__}, gguf-py {gguf.__version__ if hasattr(gguf, '__version__') else '?'}")
    print(f"{'fixture':<22} {'type':<6} {'KL mean':>9} {'KL max':>9} {'max|d|':>8} {'top-1':>6}")
    for fx in FIXTURES:
        golden = json.loads((ROOT / "fixtures" / fx / "golden.json").read_text())
        prompts = [p["ids"] + p["greedy"] for p in golden["prompts_detail"]]
        bnet = WORK / f"{fx}.bnet"
        sh(BIN / "bitnet-pack", ROOT / "fixtures" / fx, bnet, "--force", "--quiet")
        for ty in TYPES:
            gg = WORK / f"{fx}.{ty}.gguf"
            sh(BIN / "bitnet-pack", bnet, gg, "--gguf-type", ty, "--force", "--quiet")
            check_reader(gg)
            stats = [compare(our_logits(bnet, ids), llama_logits(gg, ids)) for ids in prompts]
            kl_mean = float(np.mean([s["kl_mean"] for s in stats]))
            kl_max = max(s["kl_max"] for s in stats)
            top1 = float(np.mean([s["top1"] for s in stats]))
            print(f"{fx:<22} {ty:<6} {kl_mean:9.2e} {kl_max:9.2e} {max(s['max_abs'] for s in stats):8.4f} {top1:6.1%}")
            misses = sum(s["top1_clear_miss"] for s in stats)
            if kl_mean > KL_MEAN_MAX or kl_max > KL_MAX_MAX or misses:
                sys.exit(f"FAILED: {fx} {ty}: llama.cpp disagrees with our runner (KL mean {kl_mean:.2e}, max {kl_max:.2e}, {misses} top-1 misses beyond the {MARGIN} margin)")
            # files from gguf-py's writer import to the same codes and scales as our own
            ours_back = WORK / f"{fx}.{ty}.back.bnet"
            sh(BIN / "bitnet-pack", gg, ours_back, "--force", "--quiet")
            want = tensor_facts(ours_back)
            Q = gguf.GGMLQuantizationType
            for pt in ([Q.TQ2_0, Q.F16] if ty == "tq2_0" else [Q.TQ1_0]):
                py = WORK / f"{fx}.{ty}.pywriter-{pt.name}.gguf"
                rewrite_with_gguf_py(gg, py, pt)
                back = WORK / f"{fx}.{ty}.pywriter-{pt.name}.bnet"
                sh(BIN / "bitnet-pack", py, back, "--force", "--quiet")
                got = tensor_facts(back)
                bad = [n for n in want if want[n] != got.get(n)]
                if bad:
                    sys.exit(f"FAILED: {py.name} (written by gguf-py) imports differently from our export in {bad}")
            print(f"{'':<22} {ty:<6} gguf-py reads our file identically; files written by gguf-py import to identical codes and scales")
    print("interop: PASS")


if __name__ == "__main__":
    main()
