//! The invariants the fuzz targets check. Shared, word for word, with the stable regression
//! test `tests/fuzz_regressions.rs`, which includes this file with `#[path]`; so it uses only
//! crates the main package depends on (bitnet, blake3, serde_json, tokenizers) and no
//! crate-level attributes.

use bitnet::format::bnet::{self, Index, Writer, ALIGN, ENTRY_LEN, HEADER_LEN, MAGIC};
use bitnet::hf::SrcDType;
use std::collections::HashSet;
use std::io::Cursor;
use std::sync::OnceLock;

/// Header field offsets used to re-seal mutated inputs (formats/bnet.md §2).
const H_MINOR: usize = 10;
const H_FILE_LEN: usize = 16;
const H_INDEX: usize = 24;
const H_BODY_HASH: usize = 72;
const H_CHECK: usize = 112;
/// Offset of the BLAKE3 in an index entry (formats/bnet.md §3).
const E_HASH: usize = 96;

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Target `bnet_open`. Three passes over one input:
///
/// 1. the bytes as given;
/// 2. the same bytes with `file_len` and `header_check` re-sealed, so that mutations get past
///    the header checksum and reach the index, names and metadata parsers;
/// 3. if pass 2 opens, every tensor checksum and the body checksum re-sealed too, so that
///    `verify` passes and the writer round trip runs on mutated containers.
pub fn check_bnet_open(data: &[u8]) {
    check_bnet_bytes(data, true);
    if data.len() < HEADER_LEN || data[..8] != MAGIC {
        return;
    }
    let mut sealed = data.to_vec();
    seal_header(&mut sealed);
    let Some(index) = check_bnet_bytes(&sealed, true) else {
        return;
    };
    seal_checksums(&mut sealed, &index);
    let index2 = Index::parse(&sealed[..])
        .expect("re-sealing the checksums of a container that opened made it fail to open");
    assert_eq!(index2.entries.len(), index.entries.len());
    let report = bnet::verify(&index2, &sealed);
    assert!(
        report.bad_tensors.is_empty() && report.body_ok,
        "verify reports checksum damage on a freshly sealed container: {report:?}"
    );
    if report.ok() {
        // Not byte-identical in general: a foreign writer may order or space the names region
        // or format the JSON differently. The content must survive, and the data region
        // (tensors and their zero padding, which verify checks) must come out the same.
        let out = rewrite(&index2, &sealed);
        let data_end = u64_at(&sealed, H_INDEX) as usize;
        assert_eq!(
            u64_at(&out, H_INDEX) as usize,
            data_end,
            "data region size changed"
        );
        assert!(
            out[HEADER_LEN..data_end] == sealed[HEADER_LEN..data_end],
            "data region changed in the round trip"
        );
        let index3 = Index::parse(&out[..]).expect("the writer's output does not open");
        assert!(
            bnet::verify(&index3, &out).ok(),
            "the writer's output does not verify"
        );
        assert_eq!(
            index3.entries, index2.entries,
            "index changed in the round trip"
        );
        assert_eq!(
            index3.meta, index2.meta,
            "metadata changed in the round trip"
        );
        for e in &index3.entries {
            assert_eq!(index3.data(&out, e), index2.data(&sealed, e));
        }
    }
}

/// Opens `data`; on success checks the index against the bytes, runs `verify`, and when
/// `verify` passes (and `roundtrip`), checks that the writer reproduces the input exactly.
pub fn check_bnet_bytes(data: &[u8], roundtrip: bool) -> Option<Index> {
    let index = Index::parse(data).ok()?;
    assert_eq!(index.file_len, data.len() as u64);
    let mut prev_end = HEADER_LEN as u64;
    let mut names = HashSet::new();
    for e in &index.entries {
        let end = e.offset.checked_add(e.len).expect("offset + len overflows");
        assert!(
            end <= data.len() as u64,
            "{}: data past end of file",
            e.name
        );
        assert!(
            e.offset.is_multiple_of(ALIGN),
            "{}: offset not aligned",
            e.name
        );
        assert!(
            e.offset >= prev_end,
            "{}: offsets not ascending/overlap",
            e.name
        );
        assert_eq!(
            Some(e.len),
            e.dtype.data_len(&e.shape),
            "{}: size formula",
            e.name
        );
        assert!(
            !e.name.is_empty() && names.insert(e.name.clone()),
            "name repeated"
        );
        assert!((1..=4).contains(&e.shape.len()));
        prev_end = end;
        let _ = index.data(data, e);
    }
    assert!(index.get("file:config.json").is_some());
    assert!(index.meta.is_object());
    let report = bnet::verify(&index, data);
    if roundtrip && report.ok() {
        let out = rewrite(&index, data);
        // The writer stamps the lowest minor version the data types need, and a reader
        // accepts any higher one (formats/bnet.md §2): a 1.x input comes back as 1.0 or 1.1
        // with its header check re-computed, and otherwise identical
        // (tests/data/fuzz/bnet_open-1.bin).
        let mut expect = data.to_vec();
        let minor = bnet::minor_version_for(index.entries.iter().map(|e| e.dtype));
        if index.version.1 != minor {
            expect[H_MINOR..H_MINOR + 2].copy_from_slice(&minor.to_le_bytes());
            seal_header(&mut expect);
        }
        assert!(
            out == expect,
            "re-writing a verified container gives different bytes"
        );
    }
    Some(index)
}

/// Writes the tensors and metadata of `index` again with `bnet::Writer`.
fn rewrite(index: &Index, data: &[u8]) -> Vec<u8> {
    let mut w = Writer::new(Cursor::new(Vec::new()), std::path::Path::new("fuzz.bnet"))
        .expect("writer starts");
    for e in &index.entries {
        w.tensor(&e.name, e.dtype, &e.shape, e.scale, index.data(data, e))
            .unwrap_or_else(|err| panic!("writer rejects tensor {:?} that opened: {err}", e.name));
    }
    let (cur, len) = w.finish(&index.meta).expect("writer finishes");
    let out = cur.into_inner();
    assert_eq!(len, out.len() as u64);
    out
}

/// Sets `file_len` to the real length and recomputes `header_check`.
pub fn seal_header(d: &mut [u8]) {
    let len = d.len() as u64;
    d[H_FILE_LEN..H_FILE_LEN + 8].copy_from_slice(&len.to_le_bytes());
    let check = blake3::hash(&d[..H_CHECK]);
    d[H_CHECK..HEADER_LEN].copy_from_slice(&check.as_bytes()[..16]);
}

/// Recomputes every tensor checksum, the body checksum and the header check.
fn seal_checksums(d: &mut [u8], index: &Index) {
    let index_offset = u64_at(d, H_INDEX) as usize;
    for (i, e) in index.entries.iter().enumerate() {
        let h = blake3::hash(&d[e.range()]);
        let at = index_offset + i * ENTRY_LEN + E_HASH;
        d[at..at + 32].copy_from_slice(h.as_bytes());
    }
    let body = blake3::hash(&d[HEADER_LEN..]);
    d[H_BODY_HASH..H_BODY_HASH + 32].copy_from_slice(body.as_bytes());
    seal_header(d);
}

/// Target `safetensors_import`: every tensor `parse_safetensors` accepts lies inside the
/// buffer, after the header, and has exactly `dtype size × element count` bytes, which decode.
pub fn check_safetensors(data: &[u8]) {
    let Ok(tensors) = bitnet::hf::parse_safetensors(data, 7) else {
        return;
    };
    let header_len = u64_at(data, 0) as usize;
    let mut names = HashSet::new();
    for (name, t) in &tensors {
        assert!(names.insert(name.clone()), "{name}: listed twice");
        assert_eq!(t.shard, 7);
        assert!(
            t.start <= t.end && t.end <= data.len(),
            "{name}: range outside the file"
        );
        assert!(
            t.start >= 8 + header_len,
            "{name}: data overlaps the header"
        );
        let size = match t.dtype {
            SrcDType::Float(f) => f.size() as u128,
            SrcDType::U8 => 1,
        };
        let numel = t
            .shape
            .iter()
            .try_fold(1u128, |a, &d| a.checked_mul(d as u128))
            .expect("element count overflows u128");
        assert_eq!(
            (t.end - t.start) as u128,
            numel * size,
            "{name}: {:?} {:?} has {} bytes",
            t.dtype,
            t.shape,
            t.end - t.start
        );
        assert_eq!(t.numel() as u128, numel);
        if let SrcDType::Float(f) = t.dtype {
            let bytes = &data[t.start..t.end];
            let mut out = vec![0f32; numel as usize];
            bitnet::quant::decode(f, bytes, &mut out);
            assert_eq!(
                bitnet::quant::first_non_finite(f, bytes),
                out.iter().position(|x| !x.is_finite()),
                "{name}: first_non_finite disagrees with decode"
            );
        }
    }
}

/// The fixture tokenizer (vocabulary 512, BOS id 0) and its model config, loaded once.
fn tokenizer() -> &'static (tokenizers::Tokenizer, bitnet::model::ModelConfig) {
    static TOK: OnceLock<(tokenizers::Tokenizer, bitnet::model::ModelConfig)> = OnceLock::new();
    TOK.get_or_init(|| {
        let tok = tokenizers::Tokenizer::from_bytes(include_bytes!(
            "../../fixtures/bitnet-latent/tokenizer.json"
        ))
        .expect("fixture tokenizer loads");
        let raw: serde_json::Value =
            serde_json::from_slice(include_bytes!("../../fixtures/bitnet-latent/config.json"))
                .expect("fixture config is JSON");
        let (cfg, _) = bitnet::model::ModelConfig::from_hf(&raw).expect("fixture config loads");
        (tok, cfg)
    })
}

/// Target `tokenizer_prompt`: any prompt (bytes read as lossy UTF-8) encodes, the ids start
/// with BOS and lie in the vocabulary, `runner::check_ids` accepts them, and decoding works.
pub fn check_tokenizer(data: &[u8]) {
    let (tok, cfg) = tokenizer();
    let text = String::from_utf8_lossy(data);
    let enc = tok
        .encode(text.as_ref(), true)
        .unwrap_or_else(|e| panic!("prompt does not encode: {e}"));
    let ids = enc.get_ids();
    assert_eq!(ids.first(), Some(&0), "encoding does not start with BOS");
    assert!(
        ids.iter().all(|&i| i < 512),
        "token id outside the vocabulary: {ids:?}"
    );
    assert_eq!(cfg.vocab_size, 512);
    let head = &ids[..ids.len().min(64)];
    bitnet::runner::check_ids(cfg, head).expect("check_ids rejects tokenizer output");
    tok.decode(ids, true)
        .expect("decode with skip_special_tokens");
    tok.decode(ids, false).expect("decode");
}

/// Target `gguf_import`: GGUF bytes through the reader (both type-id dialects), a re-write by
/// our writer, and the import into a `.bnet`.
///
/// - parsing never panics; what parses has every tensor inside the file, aligned, disjoint;
/// - what parses re-writes (when ggml's 63-byte name limit allows) to a file that parses to the
///   same metadata, tensor names, dims, types and data bytes;
/// - what imports is a container that opens, verifies, and holds only canonical packed codes.
pub fn check_gguf_import(data: &[u8]) {
    use bitnet::format::gguf::{Gguf, PlannedTensor, Writer as GgufWriter};
    for bitnet_cpp in [false, true] {
        let Ok(g) = Gguf::parse(data, bitnet_cpp) else {
            continue;
        };
        let mut spans: Vec<_> = g.tensors.iter().map(|t| t.range()).collect();
        spans.sort_by_key(|r| r.start);
        assert!(spans.windows(2).all(|w| w[0].end <= w[1].start), "overlap");
        assert!(
            spans.iter().all(|r| r.end <= data.len()),
            "outside the file"
        );
        assert!(
            g.tensors.iter().all(|t| t.offset % g.alignment == 0),
            "misaligned"
        );
        if g.tensors.iter().all(|t| t.name.len() <= 63) {
            let kv: Vec<_> =
                g.kv.iter()
                    .filter(|(k, _)| k != "general.alignment")
                    .cloned()
                    .collect();
            let plan: Vec<PlannedTensor> = g
                .tensors
                .iter()
                .map(|t| PlannedTensor {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    ty: t.ty,
                })
                .collect();
            let mut w = GgufWriter::new(Vec::new(), std::path::Path::new("fuzz.gguf"), &kv, &plan)
                .expect("a parsed file re-writes");
            for t in &g.tensors {
                w.write(&data[t.range()]).expect("in memory");
            }
            let out = w.finish().expect("in memory");
            let g2 = Gguf::parse(&out, bitnet_cpp).expect("our writer's output parses");
            let kv2: Vec<_> = g2
                .kv
                .iter()
                .filter(|(k, _)| k != "general.alignment")
                .cloned()
                .collect();
            assert_eq!(kv2, kv, "metadata changed in the re-write");
            assert_eq!(g2.tensors.len(), g.tensors.len());
            for (a, b) in g.tensors.iter().zip(&g2.tensors) {
                assert_eq!((&a.name, &a.dims, a.ty), (&b.name, &b.dims, b.ty));
                assert!(
                    data[a.range()] == out[b.range()],
                    "data of {} changed",
                    a.name
                );
            }
        }
        let opts = bitnet::gguf_io::ImportOptions {
            activation: Some(bitnet::model::Activation::Silu),
            ..Default::default()
        };
        if bitnet::gguf_io::plan_import(&g, &opts).is_err() {
            continue;
        }
        let dest = std::path::Path::new("fuzz.bnet");
        if let Ok((out, _)) = bitnet::gguf_io::import(
            &g,
            data,
            std::path::Path::new("fuzz.gguf"),
            Cursor::new(Vec::new()),
            dest,
            &opts,
            &|_| {},
        ) {
            let out = out.into_inner();
            let index = Index::parse(&out[..]).expect("an imported container opens");
            assert!(
                bnet::verify(&index, &out).ok(),
                "an imported container verifies"
            );
            for e in index.entries.iter().filter(|e| e.dtype.is_packed()) {
                assert!(bitnet::quant::packed_is_canonical(e, index.data(&out, e)));
            }
        }
    }
}
