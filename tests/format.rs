//! The .bnet container as a contract: byte-exact layout, hostile input, O(1) open.

use bitnet::format::bnet::{self, ByteSource, DType, Index, Scale, ScaleOp, Writer};
use bitnet::Error;
use proptest::prelude::*;
use serde_json::json;
use std::borrow::Cow;
use std::io::{Cursor, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};

/// A small container with one tensor of each kind.
fn sample() -> Vec<u8> {
    let mut w = Writer::new(Cursor::new(Vec::new()), "sample.bnet".as_ref()).unwrap();
    w.tensor(
        "norm",
        DType::F32,
        &[3],
        Scale::NONE,
        &[0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64],
    )
    .unwrap();
    let mut t2 = vec![0u8; 2 * 64];
    bitnet::quant::pack_t2_row(&[1, -1, 0, 0, 1], &mut t2[..64]);
    bitnet::quant::pack_t2_row(&[0, 0, 0, 0, -1], &mut t2[64..]);
    let scale = Scale {
        value: 0.5,
        op: ScaleOp::Divide,
        source_dtype: DType::BF16,
    };
    w.tensor("proj", DType::T2, &[2, 5], scale, &t2).unwrap();
    w.tensor("file:config.json", DType::U8, &[2], Scale::NONE, b"{}")
        .unwrap();
    let (c, len) = w
        .finish(&json!({"format": "bnet", "family": "test"}))
        .unwrap();
    let v = c.into_inner();
    assert_eq!(v.len() as u64, len);
    v
}

#[test]
fn layout_is_byte_exact() {
    let b = sample();
    assert_eq!(&b[..8], b"\x89BNET\r\n\x1a");
    assert_eq!(&b[8..12], &[1, 0, 0, 0]); // version 1.0
    assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 128);
    assert_eq!(
        u64::from_le_bytes(b[16..24].try_into().unwrap()),
        b.len() as u64
    );
    assert_eq!(u32::from_le_bytes(b[64..68].try_into().unwrap()), 64);
    // tensors at 128, 192 (128 + 12 padded to 64), 320 (192 + 128)
    let idx = Index::parse(&b[..]).unwrap();
    let offs: Vec<u64> = idx.entries.iter().map(|e| e.offset).collect();
    assert_eq!(offs, [128, 192, 320]);
    assert_eq!(&b[128..140], &[0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64]);
    assert!(b[140..192].iter().all(|&x| x == 0), "padding must be zero");
    assert_eq!(&b[192..197], &[0x56, 0x54, 0x55, 0x55, 0x56]);
    // the index starts at align8(320 + 2) = 328
    assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), 328);
    assert_eq!(&b[328 + 8..328 + 12], &[0, 1, 0, 0]); // entry 0: dtype F32, ndim 1, no scale
    let e1 = &b[328 + 128..328 + 256];
    assert_eq!(&e1[8..12], &[16, 2, 2, 2]); // T2, 2-D, divide, BF16
    assert_eq!(f32::from_le_bytes(e1[64..68].try_into().unwrap()), 0.5);
    // Pin the whole file: any change to the layout changes this digest.
    assert_eq!(
        blake3::hash(&b).to_hex().as_str(),
        include_str!("data/sample.bnet.blake3").trim()
    );
}

#[test]
fn round_trip_and_verify() {
    let b = sample();
    let idx = Index::parse(&b[..]).unwrap();
    assert_eq!(idx.entries.len(), 3);
    assert_eq!(idx.get("proj").unwrap().shape, [2, 5]);
    assert_eq!(idx.get("proj").unwrap().scale.op, ScaleOp::Divide);
    assert!(bnet::verify(&idx, &b).ok());
}

#[test]
fn newer_major_version_is_rejected_by_name() {
    let mut b = sample();
    b[8] = 2;
    match Index::parse(&b[..]) {
        Err(Error::Version {
            found: 2,
            supported: 1,
        }) => {}
        other => panic!("expected a version error, got {other:?}"),
    }
}

#[test]
fn wrong_magic_is_rejected() {
    let mut b = sample();
    b[1] = b'X';
    let e = Index::parse(&b[..]).unwrap_err().to_string();
    assert!(e.contains("magic"), "{e}");
}

#[test]
fn every_truncation_is_rejected() {
    let b = sample();
    for n in 0..b.len() {
        assert!(
            Index::parse(&b[..n]).is_err(),
            "accepted a file truncated to {n} bytes"
        );
    }
}

/// Flipping any bit anywhere is either rejected at open or caught by verify, never accepted.
#[test]
fn every_bit_flip_is_caught() {
    let b = sample();
    for i in 0..b.len() {
        for bit in 0..8 {
            let mut c = b.clone();
            c[i] ^= 1 << bit;
            if let Ok(idx) = Index::parse(&c[..]) {
                assert!(
                    !bnet::verify(&idx, &c).ok(),
                    "flip of byte {i} bit {bit} went unnoticed"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random garbage never panics the reader.
    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600), keep_header in any::<bool>()) {
        let mut d = data;
        if keep_header && d.len() >= 128 {
            d[..128].copy_from_slice(&sample()[..128]);
        }
        let _ = Index::parse(&d[..]);
    }

    /// Write -> read round trips over random shapes and dtypes.
    #[test]
    fn write_read_round_trip(shapes in proptest::collection::vec((1u64..5, 1u64..700, 0usize..4), 1..6)) {
        let mut w = Writer::new(Cursor::new(Vec::new()), "p.bnet".as_ref()).unwrap();
        let mut want = Vec::new();
        for (i, &(r, k, d)) in shapes.iter().enumerate() {
            let dtype = [DType::F32, DType::BF16, DType::T2, DType::B1][d];
            let scale = if dtype.is_packed() { Scale { value: 1.5, op: ScaleOp::Multiply, source_dtype: DType::F32 } } else { Scale::NONE };
            let len = dtype.data_len(&[r, k]).unwrap() as usize;
            let data: Vec<u8> = match dtype {
                DType::T2 => vec![0x55; len],
                DType::B1 => vec![0; len],
                _ => (0..len).map(|j| (j * 7 + i) as u8 & 0x3f).collect(),
            };
            w.tensor(&format!("t{i}"), dtype, &[r, k], scale, &data).unwrap();
            want.push((dtype, vec![r, k], data));
        }
        w.tensor("file:config.json", DType::U8, &[1], Scale::NONE, b" ").unwrap();
        let (c, _) = w.finish(&json!({})).unwrap();
        let b = c.into_inner();
        let idx = Index::parse(&b[..]).unwrap();
        prop_assert!(bnet::verify(&idx, &b).ok());
        for (i, (dtype, shape, data)) in want.iter().enumerate() {
            let e = &idx.entries[i];
            prop_assert_eq!(e.dtype, *dtype);
            prop_assert_eq!(&e.shape, shape);
            prop_assert_eq!(e.offset % 64, 0);
            prop_assert_eq!(idx.data(&b, e), &data[..]);
        }
    }
}

/// A sink that turns all-zero writes into holes, so a multi-GB container costs no disk.
struct Sparse(std::fs::File);
impl Write for Sparse {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.iter().all(|&b| b == 0) {
            self.0.seek(SeekFrom::Current(buf.len() as i64))?;
            Ok(buf.len())
        } else {
            self.0.write(buf)
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
impl Seek for Sparse {
    fn seek(&mut self, p: SeekFrom) -> std::io::Result<u64> {
        self.0.seek(p)
    }
}

/// Reads through `pread` and counts every byte it hands out.
struct Counting {
    file: std::fs::File,
    read: AtomicU64,
}
impl ByteSource for Counting {
    fn len(&self) -> u64 {
        self.file.metadata().unwrap().len()
    }
    fn read_at(&self, offset: u64, len: usize) -> bitnet::Result<Cow<'_, [u8]>> {
        use std::os::unix::fs::FileExt;
        let mut v = vec![0u8; len];
        self.file
            .read_exact_at(&mut v, offset)
            .map_err(|e| Error::Io {
                path: "sparse".into(),
                source: e,
            })?;
        self.read.fetch_add(len as u64, Ordering::Relaxed);
        Ok(Cow::Owned(v))
    }
}

/// Opening reads the header, index and metadata only: the same few bytes for 5 GiB of tensors
/// as for a kilobyte.
#[test]
fn open_does_not_read_tensor_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bnet");
    let f = std::fs::File::create(&path).unwrap();
    let mut w = Writer::new(Sparse(f), &path).unwrap();
    let zeros = vec![0u8; 64 << 20];
    for t in 0..5 {
        // 5 tensors of 1 GiB each, written as holes
        w.begin_tensor(
            &format!("model.layers.{t}.weight"),
            DType::BF16,
            &[16384, 32768],
            Scale::NONE,
        )
        .unwrap();
        for _ in 0..16 {
            w.write(&zeros).unwrap();
        }
        w.end_tensor().unwrap();
    }
    w.tensor("file:config.json", DType::U8, &[2], Scale::NONE, b"{}")
        .unwrap();
    let (mut sink, len) = w.finish(&json!({"format": "bnet"})).unwrap();
    sink.flush().unwrap();
    sink.0.set_len(len).unwrap();
    assert!(len > 5 << 30);
    let src = Counting {
        file: std::fs::File::open(&path).unwrap(),
        read: AtomicU64::new(0),
    };
    let idx = Index::parse(&src).unwrap();
    assert_eq!(idx.entries.len(), 6);
    let read = src.read.load(Ordering::Relaxed);
    assert!(read < 4096, "open read {read} bytes of a {len}-byte file");
    // and through the real mmap path
    let f = bitnet::format::BnetFile::open(&path).unwrap();
    assert_eq!(f.index.entries.len(), 6);
}
