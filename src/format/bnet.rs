//! The `.bnet` container: layout constants, header and index (de)serialization, the reader
//! (`Index::parse`) and the streaming writer (`Writer`). `formats/bnet.md` is the contract;
//! every size and offset here is pinned to it by `const` assertions and byte-exact tests.

use crate::error::{Error, Result};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{Seek, SeekFrom, Write};

/// File magic: `\x89BNET\r\n\x1a` (the high byte and CR LF catch text-mode mangling).
pub const MAGIC: [u8; 8] = *b"\x89BNET\r\n\x1a";
pub const VERSION_MAJOR: u16 = 1;
/// The highest minor version this code reads and writes; a writer stamps the lowest minor
/// version that describes its file ([`minor_version_for`]), so files without Q4 or TL stay 1.0.
pub const VERSION_MINOR: u16 = 2;

/// The lowest minor version of major 1 that has every dtype used (formats/bnet.md §10):
/// Q4 arrived in 1.1, TL in 1.2.
pub fn minor_version_for(dtypes: impl IntoIterator<Item = DType>) -> u16 {
    dtypes
        .into_iter()
        .map(|d| match d {
            DType::TL => 2,
            DType::Q4 => 1,
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

/// TL (formats/bnet.md §4.4): rows per block, columns per chunk, bytes per chunk of a block.
pub const TL_ROWS: u64 = 32;
pub const TL_CHUNK_COLS: u64 = 24;
pub const TL_CHUNK_BYTES: u64 = 160;
const _: () = assert!(TL_ROWS as usize == crate::kernels::tl::ROWS);
const _: () = assert!(TL_CHUNK_COLS as usize == crate::kernels::tl::CHUNK_COLS);
const _: () = assert!(TL_CHUNK_BYTES as usize == crate::kernels::tl::CHUNK_BYTES);
const _: () = assert!(TL_CHUNK_BYTES == TL_ROWS * (1 + 4));

/// Weights per Q4 block, and bytes per block (an f16 scale, then 16 bytes of nibbles).
pub const Q4_BLOCK: u64 = 32;
pub const Q4_BLOCK_BYTES: u64 = 18;
pub const HEADER_LEN: usize = 128;
pub const ENTRY_LEN: usize = 128;
/// Every tensor starts at a multiple of this: one cache line, one AVX-512 register.
pub const ALIGN: u64 = 64;
pub const MAX_TENSORS: u64 = 1 << 20;
pub const MAX_NAMES_LEN: u64 = 64 << 20;
pub const MAX_META_LEN: u64 = 64 << 20;
pub const MAX_NAME_LEN: u32 = 1024;
pub const MAX_NDIM: usize = 4;
/// Weights per packed block (T2: 64 bytes, B1: 32 bytes).
pub const BLOCK: u64 = 256;

// Field offsets of the header (formats/bnet.md §2).
const H_MAJOR: usize = 8;
const H_MINOR: usize = 10;
const H_HLEN: usize = 12;
const H_FILE_LEN: usize = 16;
const H_INDEX: usize = 24;
const H_COUNT: usize = 32;
const H_NAMES: usize = 40;
const H_META_OFF: usize = 48;
const H_META_LEN: usize = 56;
const H_ALIGN: usize = 64;
const H_FLAGS: usize = 68;
const H_BODY_HASH: usize = 72;
const H_RESERVED: usize = 104;
const H_CHECK: usize = 112;
const _: () = assert!(H_CHECK + 16 == HEADER_LEN);
const _: () = assert!(H_BODY_HASH + 32 == H_RESERVED);

// Field offsets of an index entry (formats/bnet.md §3).
const E_NAME_OFF: usize = 0;
const E_NAME_LEN: usize = 4;
const E_DTYPE: usize = 8;
const E_NDIM: usize = 9;
const E_SCALE_OP: usize = 10;
const E_SCALE_DTYPE: usize = 11;
const E_RES1: usize = 12;
const E_SHAPE: usize = 16;
const E_OFFSET: usize = 48;
const E_LEN: usize = 56;
const E_SCALE: usize = 64;
const E_RES2: usize = 68;
const E_HASH: usize = 96;
const _: () = assert!(E_SHAPE + 8 * MAX_NDIM == E_OFFSET);
const _: () = assert!(E_HASH + 32 == ENTRY_LEN);

/// Storage type of a tensor (formats/bnet.md §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// Signed bytes with per-row f32 scales in `<name>.row_scale`.
    I8,
    /// Opaque bytes (blobs).
    U8,
    /// 4-bit values in blocks of 32 with an f16 scale each (ggml's Q4_0 block, formats/bnet.md
    /// §4.3): a compact lm_head for decoding. Format version 1.1.
    Q4,
    /// Ternary, 2 bits per weight, 256-weight blocks of 64 bytes.
    T2,
    /// Binary, 1 bit per weight, 256-weight blocks of 32 bytes.
    B1,
    /// Ternary, 5 bits per 3 weights, in blocks of 32 rows for table-lookup kernels
    /// (formats/bnet.md §4.4). Format version 1.2.
    TL,
}

impl DType {
    pub fn id(self) -> u8 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::BF16 => 2,
            DType::I8 => 3,
            DType::U8 => 4,
            DType::Q4 => 5,
            DType::T2 => 16,
            DType::B1 => 17,
            DType::TL => 18,
        }
    }
    pub fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::BF16,
            3 => DType::I8,
            4 => DType::U8,
            5 => DType::Q4,
            16 => DType::T2,
            17 => DType::B1,
            18 => DType::TL,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I8 => "I8",
            DType::U8 => "U8",
            DType::Q4 => "Q4",
            DType::T2 => "T2",
            DType::B1 => "B1",
            DType::TL => "TL",
        }
    }
    pub fn is_packed(self) -> bool {
        matches!(self, DType::T2 | DType::B1 | DType::TL)
    }
    /// Bytes of one packed row of `k` weights, or `k` elements for plain types; `None` for TL,
    /// which is stored in blocks of 32 rows (and on overflow).
    pub fn row_bytes(self, k: u64) -> Option<u64> {
        match self {
            DType::F32 => k.checked_mul(4),
            DType::F16 | DType::BF16 => k.checked_mul(2),
            DType::I8 | DType::U8 => Some(k),
            DType::Q4 => Some(k.div_ceil(Q4_BLOCK) * Q4_BLOCK_BYTES),
            DType::T2 => Some(k.div_ceil(BLOCK) * 64),
            DType::B1 => Some(k.div_ceil(BLOCK) * 32),
            DType::TL => None,
        }
    }
    /// The size formula of formats/bnet.md §4; `None` on overflow.
    pub fn data_len(self, shape: &[u64]) -> Option<u64> {
        let (&k, outer) = shape.split_last()?;
        let rows = outer.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
        let len = match self {
            DType::TL => {
                let (r, c) = (rows.div_ceil(TL_ROWS), k.div_ceil(TL_CHUNK_COLS));
                r.checked_mul(c)?.checked_mul(TL_CHUNK_BYTES)?
            }
            _ => rows.checked_mul(self.row_bytes(k)?)?,
        };
        (len <= i64::MAX as u64).then_some(len)
    }
}

/// How a packed tensor's scale applies (formats/bnet.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleOp {
    None,
    Multiply,
    Divide,
}

impl ScaleOp {
    fn id(self) -> u8 {
        match self {
            ScaleOp::None => 0,
            ScaleOp::Multiply => 1,
            ScaleOp::Divide => 2,
        }
    }
    fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => ScaleOp::None,
            1 => ScaleOp::Multiply,
            2 => ScaleOp::Divide,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            ScaleOp::None => "none",
            ScaleOp::Multiply => "multiply",
            ScaleOp::Divide => "divide",
        }
    }
}

/// Per-tensor scale of a packed tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scale {
    pub value: f32,
    pub op: ScaleOp,
    /// The dtype the source held the scale in (F32, F16 or BF16).
    pub source_dtype: DType,
}

impl Scale {
    pub const NONE: Scale = Scale {
        value: 0.0,
        op: ScaleOp::None,
        source_dtype: DType::F32,
    };
    /// Applies the scale to a code value exactly as formats/bnet.md §5 says.
    pub fn apply(&self, v: f32) -> f32 {
        match self.op {
            ScaleOp::Multiply => v * self.value,
            ScaleOp::Divide => v / self.value,
            ScaleOp::None => v,
        }
    }
}

/// One tensor of the index.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub offset: u64,
    pub len: u64,
    pub scale: Scale,
    pub blake3: [u8; 32],
}

impl Entry {
    /// Number of logical elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
    /// Byte range of the data in the file.
    pub fn range(&self) -> std::ops::Range<usize> {
        // Both fit in usize: parse checked `offset + len <= file_len` and the file is mapped.
        self.offset as usize..(self.offset + self.len) as usize
    }
    /// `(rows, k)` of a tensor viewed as a matrix of rows of its last dimension.
    pub fn rows_cols(&self) -> (u64, u64) {
        let k = *self.shape.last().unwrap_or(&1);
        (self.numel() / k.max(1), k)
    }
}

/// The parsed header and index of a container: small, owned, and independent of the bytes.
#[derive(Clone, Debug)]
pub struct Index {
    pub version: (u16, u16),
    pub file_len: u64,
    pub body_blake3: [u8; 32],
    pub entries: Vec<Entry>,
    /// The metadata JSON object (formats/bnet.md §7).
    pub meta: serde_json::Value,
}

/// Random-access bytes: a `&[u8]` (an mmap) or, in tests, a reader that counts what it reads.
#[allow(clippy::len_without_is_empty)]
pub trait ByteSource {
    fn len(&self) -> u64;
    /// Reads exactly `len` bytes at `offset`; the caller has bounds-checked the range.
    fn read_at(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>>;
}

impl ByteSource for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        let start = usize::try_from(offset).map_err(|_| Error::format("offset out of range"))?;
        let end = start
            .checked_add(len)
            .ok_or_else(|| Error::format("offset out of range"))?;
        self.get(start..end)
            .map(Cow::Borrowed)
            .ok_or_else(|| Error::format("range past end of file"))
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn header_check(h: &[u8]) -> [u8; 16] {
    let full = blake3::hash(&h[..H_CHECK]);
    full.as_bytes()[..16].try_into().expect("16 bytes")
}

/// Rounds `x` up to a multiple of `a` (a power of two); `None` on overflow.
pub fn align_up(x: u64, a: u64) -> Option<u64> {
    Some(x.checked_add(a - 1)? & !(a - 1))
}

impl Index {
    /// Opens a container: validates header, index, names and metadata without touching tensor
    /// data (formats/bnet.md §8).
    pub fn parse<S: ByteSource + ?Sized>(src: &S) -> Result<Index> {
        let actual_len = src.len();
        if actual_len < HEADER_LEN as u64 {
            return Err(Error::format(format!(
                "file is {actual_len} bytes, shorter than the {HEADER_LEN}-byte header (truncated?); copy or download it again, or re-create it with bitnet-pack"
            )));
        }
        let h = src.read_at(0, HEADER_LEN)?;
        if h[..8] != MAGIC {
            return Err(Error::format(
                "wrong magic bytes: this is not a .bnet container (make one with bitnet-pack)",
            ));
        }
        let major = u16_at(&h, H_MAJOR);
        if major != VERSION_MAJOR {
            return Err(Error::Version {
                found: major,
                supported: VERSION_MAJOR,
            });
        }
        if header_check(&h) != h[H_CHECK..] {
            return Err(Error::format(
                "header checksum mismatch: the header is damaged; re-create the file with bitnet-pack",
            ));
        }
        let minor = u16_at(&h, H_MINOR);
        let hlen = u32_at(&h, H_HLEN);
        let file_len = u64_at(&h, H_FILE_LEN);
        let index_offset = u64_at(&h, H_INDEX);
        let count = u64_at(&h, H_COUNT);
        let names_len = u64_at(&h, H_NAMES);
        let meta_offset = u64_at(&h, H_META_OFF);
        let meta_len = u64_at(&h, H_META_LEN);
        let align = u32_at(&h, H_ALIGN);
        let flags = u32_at(&h, H_FLAGS);
        if hlen as usize != HEADER_LEN || align as u64 != ALIGN || flags != 0 {
            return Err(Error::format(format!(
                "header fields out of range (header length {hlen}, alignment {align}, flags {flags:#x})"
            )));
        }
        if h[H_RESERVED..H_CHECK].iter().any(|&b| b != 0) {
            return Err(Error::format("reserved header bytes are not zero"));
        }
        if file_len != actual_len {
            return Err(Error::format(format!(
                "header says the file is {file_len} bytes but it is {actual_len} (truncated or appended to); copy or download it again, or re-create it with bitnet-pack"
            )));
        }
        if count > MAX_TENSORS || names_len > MAX_NAMES_LEN || meta_len > MAX_META_LEN {
            return Err(Error::format(format!(
                "index too large: {count} tensors, {names_len} bytes of names, {meta_len} bytes of metadata"
            )));
        }
        let index_len = count * ENTRY_LEN as u64;
        let layout_ok = index_offset >= HEADER_LEN as u64
            && index_offset.is_multiple_of(8)
            && index_offset.checked_add(index_len + names_len) == Some(meta_offset)
            && meta_offset.checked_add(meta_len) == Some(file_len);
        if !layout_ok {
            return Err(Error::format(
                "index, names and metadata regions do not tile the end of the file",
            ));
        }
        let index = src.read_at(index_offset, index_len as usize)?;
        let names = src.read_at(index_offset + index_len, names_len as usize)?;
        let meta_bytes = src.read_at(meta_offset, meta_len as usize)?;

        let mut entries = Vec::with_capacity(count as usize);
        let mut seen = HashMap::with_capacity(count as usize);
        let mut expected_offset = HEADER_LEN as u64;
        for (i, e) in index.chunks_exact(ENTRY_LEN).enumerate() {
            let entry = parse_entry(e, &names)
                .map_err(|m| Error::format(format!("tensor index entry {i}: {m}")))?;
            if seen.insert(entry.name.clone(), i).is_some() {
                return Err(Error::format(format!(
                    "tensor name {:?} appears twice",
                    entry.name
                )));
            }
            if entry.offset != expected_offset {
                return Err(Error::format(format!(
                    "tensor {:?} starts at {} but must start at {} (hole, overlap or disorder)",
                    entry.name, entry.offset, expected_offset
                )));
            }
            let end = entry
                .offset
                .checked_add(entry.len)
                .filter(|&end| end <= index_offset)
                .ok_or_else(|| {
                    Error::format(format!("tensor {:?} runs past the data region", entry.name))
                })?;
            expected_offset = align_up(end, ALIGN).ok_or_else(|| Error::format("overflow"))?;
            entries.push(entry);
        }
        let data_end = match entries.last() {
            Some(e) => align_up(e.offset + e.len, 8).ok_or_else(|| Error::format("overflow"))?,
            None => HEADER_LEN as u64,
        };
        if data_end != index_offset {
            return Err(Error::format(format!(
                "the index starts at {index_offset} but the data ends at {data_end}"
            )));
        }
        let meta: serde_json::Value = serde_json::from_slice(&meta_bytes)
            .map_err(|e| Error::format(format!("metadata is not valid JSON: {e}")))?;
        if !meta.is_object() {
            return Err(Error::format("metadata is not a JSON object"));
        }
        let index = Index {
            version: (major, minor),
            file_len,
            body_blake3: h[H_BODY_HASH..H_BODY_HASH + 32].try_into().expect("32"),
            entries,
            meta,
        };
        if index.get("file:config.json").is_none() {
            return Err(Error::format("the blob file:config.json is missing"));
        }
        let need = minor_version_for(index.entries.iter().map(|e| e.dtype));
        if minor < need {
            let newest = index
                .entries
                .iter()
                .map(|e| e.dtype)
                .find(|&d| minor_version_for([d]) == need)
                .map_or("?", DType::name);
            return Err(Error::format(format!(
                "the file says format version {major}.{minor} but uses data type {newest}, which \
                 needs {major}.{need}: the header is wrong; re-create the file with bitnet-pack"
            )));
        }
        for e in index.entries.iter().filter(|e| e.dtype == DType::I8) {
            let s = format!("{}.row_scale", e.name);
            let (rows, _) = e.rows_cols();
            // by the name map: a linear lookup per I8 tensor would be quadratic in the count
            if !seen
                .get(&s)
                .map(|&i| &index.entries[i])
                .is_some_and(|c| c.dtype == DType::F32 && c.shape == [rows])
            {
                return Err(Error::format(format!(
                    "I8 tensor {:?} needs its companion {s:?} (F32, shape [{rows}]), which is \
                     missing or of another type or shape",
                    e.name
                )));
            }
        }
        Ok(index)
    }

    /// The entry of a tensor by name.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Bytes of a tensor inside the whole-file bytes that were parsed.
    pub fn data<'a>(&self, bytes: &'a [u8], e: &Entry) -> &'a [u8] {
        &bytes[e.range()]
    }
}

fn parse_entry(e: &[u8], names: &[u8]) -> std::result::Result<Entry, String> {
    let name_off = u32_at(e, E_NAME_OFF) as usize;
    let name_len = u32_at(e, E_NAME_LEN);
    if name_len == 0 || name_len > MAX_NAME_LEN {
        return Err(format!("name length {name_len} is out of range 1..=1024"));
    }
    let name_bytes = name_off
        .checked_add(name_len as usize)
        .and_then(|end| names.get(name_off..end))
        .ok_or("name lies outside the names region")?;
    let name = std::str::from_utf8(name_bytes)
        .map_err(|_| "name is not UTF-8")?
        .to_string();
    let dtype = DType::from_id(e[E_DTYPE]).ok_or_else(|| {
        format!(
            "{name:?}: unknown dtype id {} (written by a newer tool?)",
            e[E_DTYPE]
        )
    })?;
    let ndim = e[E_NDIM] as usize;
    if ndim == 0 || ndim > MAX_NDIM {
        return Err(format!("{name:?}: ndim {ndim} is out of range 1..=4"));
    }
    let mut shape = Vec::with_capacity(ndim);
    for d in 0..MAX_NDIM {
        let v = u64_at(e, E_SHAPE + 8 * d);
        if d < ndim {
            if v == 0 {
                return Err(format!("{name:?}: dimension {d} is zero"));
            }
            shape.push(v);
        } else if v != 0 {
            return Err(format!("{name:?}: unused shape slot {d} is not zero"));
        }
    }
    let op = ScaleOp::from_id(e[E_SCALE_OP])
        .ok_or_else(|| format!("{name:?}: unknown scale op {}", e[E_SCALE_OP]))?;
    let source_dtype = DType::from_id(e[E_SCALE_DTYPE])
        .filter(|d| matches!(d, DType::F32 | DType::F16 | DType::BF16))
        .ok_or_else(|| format!("{name:?}: bad scale dtype {}", e[E_SCALE_DTYPE]))?;
    let value = f32::from_bits(u32_at(e, E_SCALE));
    if e[E_RES1..E_SHAPE].iter().any(|&b| b != 0) || e[E_RES2..E_HASH].iter().any(|&b| b != 0) {
        return Err(format!("{name:?}: reserved bytes are not zero"));
    }
    if (dtype.is_packed() || dtype == DType::Q4) && ndim != 2 {
        return Err(format!("{name:?}: {} tensors must be 2-D", dtype.name()));
    }
    if dtype.is_packed() {
        if op == ScaleOp::None || !value.is_finite() || value <= 0.0 {
            return Err(format!(
                "{name:?}: packed tensor needs a finite positive scale"
            ));
        }
    } else if op != ScaleOp::None || value.to_bits() != 0 {
        return Err(format!("{name:?}: only packed tensors carry a scale"));
    }
    let offset = u64_at(e, E_OFFSET);
    let len = u64_at(e, E_LEN);
    if !offset.is_multiple_of(ALIGN) {
        return Err(format!(
            "{name:?}: data offset {offset} is not 64-byte aligned"
        ));
    }
    let want = dtype
        .data_len(&shape)
        .ok_or_else(|| format!("{name:?}: shape {shape:?} overflows"))?;
    if len != want {
        return Err(format!(
            "{name:?}: {len} data bytes, but {} {shape:?} needs {want}",
            dtype.name()
        ));
    }
    Ok(Entry {
        name,
        dtype,
        shape,
        offset,
        len,
        scale: Scale {
            value,
            op,
            source_dtype,
        },
        blake3: e[E_HASH..E_HASH + 32].try_into().expect("32"),
    })
}

fn encode_entry(e: &Entry, name_off: u32) -> [u8; ENTRY_LEN] {
    let mut b = [0u8; ENTRY_LEN];
    b[E_NAME_OFF..E_NAME_OFF + 4].copy_from_slice(&name_off.to_le_bytes());
    b[E_NAME_LEN..E_NAME_LEN + 4].copy_from_slice(&(e.name.len() as u32).to_le_bytes());
    b[E_DTYPE] = e.dtype.id();
    b[E_NDIM] = e.shape.len() as u8;
    b[E_SCALE_OP] = e.scale.op.id();
    b[E_SCALE_DTYPE] = e.scale.source_dtype.id();
    for (d, v) in e.shape.iter().enumerate() {
        b[E_SHAPE + 8 * d..E_SHAPE + 8 * d + 8].copy_from_slice(&v.to_le_bytes());
    }
    b[E_OFFSET..E_OFFSET + 8].copy_from_slice(&e.offset.to_le_bytes());
    b[E_LEN..E_LEN + 8].copy_from_slice(&e.len.to_le_bytes());
    b[E_SCALE..E_SCALE + 4].copy_from_slice(&e.scale.value.to_bits().to_le_bytes());
    b[E_HASH..E_HASH + 32].copy_from_slice(&e.blake3);
    b
}

/// Hashes in parallel when a chunk is large enough to be worth it.
fn hash_update(h: &mut blake3::Hasher, data: &[u8]) {
    if data.len() >= 1 << 20 {
        h.update_rayon(data);
    } else {
        h.update(data);
    }
}

/// Streaming writer: tensors are written in order and hashed as they go; `finish` appends the
/// index and metadata and then fills in the header.
pub struct Writer<W: Write + Seek> {
    out: W,
    pos: u64,
    body: blake3::Hasher,
    entries: Vec<Entry>,
    names: HashSet<String>,
    current: Option<(Entry, blake3::Hasher)>,
    /// The final output path, for error messages.
    dest: std::path::PathBuf,
}

impl<W: Write + Seek> Writer<W> {
    /// Starts a container; `out` must be positioned at its start. `dest` names the output in
    /// error messages.
    pub fn new(mut out: W, dest: &std::path::Path) -> Result<Self> {
        out.write_all(&[0u8; HEADER_LEN])
            .map_err(|e| crate::output::write_error(dest, e))?;
        Ok(Writer {
            dest: dest.to_path_buf(),
            out,
            pos: HEADER_LEN as u64,
            body: blake3::Hasher::new(),
            entries: Vec::new(),
            names: HashSet::new(),
            current: None,
        })
    }

    fn put(&mut self, data: &[u8]) -> Result<()> {
        self.out
            .write_all(data)
            .map_err(|e| crate::output::write_error(&self.dest, e))?;
        hash_update(&mut self.body, data);
        self.pos += data.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, align: u64) -> Result<()> {
        let target = align_up(self.pos, align).expect("file offsets fit in u64");
        let zeros = [0u8; ALIGN as usize];
        let n = (target - self.pos) as usize;
        self.put(&zeros[..n])
    }

    /// Begins a tensor; its bytes follow through `write`, and `end_tensor` closes it.
    pub fn begin_tensor(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        scale: Scale,
    ) -> Result<()> {
        assert!(
            self.current.is_none(),
            "begin_tensor while a tensor is open"
        );
        if name.is_empty() || name.len() > MAX_NAME_LEN as usize || !self.names.insert(name.into())
        {
            return Err(Error::checkpoint(format!(
                "tensor name {name:?} is empty, too long or duplicated"
            )));
        }
        if shape.is_empty() || shape.len() > MAX_NDIM || shape.contains(&0) {
            return Err(Error::checkpoint(format!(
                "tensor {name:?} has unsupported shape {shape:?} (1 to 4 non-zero dimensions)"
            )));
        }
        let len = dtype
            .data_len(shape)
            .ok_or_else(|| Error::checkpoint(format!("tensor {name:?} is too large")))?;
        self.pad_to(ALIGN)?;
        let entry = Entry {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            offset: self.pos,
            len,
            scale,
            blake3: [0; 32],
        };
        self.current = Some((entry, blake3::Hasher::new()));
        Ok(())
    }

    /// Appends bytes to the open tensor.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let (_, h) = self.current.as_mut().expect("write without begin_tensor");
        hash_update(h, data);
        self.put(data)
    }

    /// Closes the open tensor, checking that exactly its size was written.
    pub fn end_tensor(&mut self) -> Result<()> {
        let (mut entry, h) = self
            .current
            .take()
            .expect("end_tensor without begin_tensor");
        let written = self.pos - entry.offset;
        if written != entry.len {
            return Err(Error::checkpoint(format!(
                "internal error: tensor {:?} got {written} bytes, expected {}",
                entry.name, entry.len
            )));
        }
        entry.blake3 = *h.finalize().as_bytes();
        self.entries.push(entry);
        Ok(())
    }

    /// Writes a whole tensor from one buffer.
    pub fn tensor(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        scale: Scale,
        data: &[u8],
    ) -> Result<()> {
        self.begin_tensor(name, dtype, shape, scale)?;
        self.write(data)?;
        self.end_tensor()
    }

    /// The version the header will carry, `major.minor`, for the metadata's `format_version`
    /// (formats/bnet.md §7): derived from the tensors written so far, like the header's.
    pub fn format_version(&self) -> String {
        let minor = minor_version_for(self.entries.iter().map(|e| e.dtype));
        format!("{VERSION_MAJOR}.{minor}")
    }

    /// Writes index, names and metadata, then the header; returns the sink and the file length.
    pub fn finish(mut self, meta: &serde_json::Value) -> Result<(W, u64)> {
        assert!(self.current.is_none(), "finish with a tensor open");
        self.pad_to(8)?;
        let index_offset = self.pos;
        let mut names = Vec::new();
        let mut index = Vec::with_capacity(self.entries.len() * ENTRY_LEN);
        for e in &self.entries {
            index.extend_from_slice(&encode_entry(e, names.len() as u32));
            names.extend_from_slice(e.name.as_bytes());
        }
        self.put(&index)?;
        self.put(&names)?;
        let meta_offset = self.pos;
        let meta_bytes = serde_json::to_vec_pretty(meta).expect("metadata serializes");
        self.put(&meta_bytes)?;
        let file_len = self.pos;

        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(&MAGIC);
        h[H_MAJOR..H_MAJOR + 2].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
        let minor = minor_version_for(self.entries.iter().map(|e| e.dtype));
        h[H_MINOR..H_MINOR + 2].copy_from_slice(&minor.to_le_bytes());
        h[H_HLEN..H_HLEN + 4].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        h[H_FILE_LEN..H_FILE_LEN + 8].copy_from_slice(&file_len.to_le_bytes());
        h[H_INDEX..H_INDEX + 8].copy_from_slice(&index_offset.to_le_bytes());
        h[H_COUNT..H_COUNT + 8].copy_from_slice(&(self.entries.len() as u64).to_le_bytes());
        h[H_NAMES..H_NAMES + 8].copy_from_slice(&(names.len() as u64).to_le_bytes());
        h[H_META_OFF..H_META_OFF + 8].copy_from_slice(&meta_offset.to_le_bytes());
        h[H_META_LEN..H_META_LEN + 8].copy_from_slice(&(meta_bytes.len() as u64).to_le_bytes());
        h[H_ALIGN..H_ALIGN + 4].copy_from_slice(&(ALIGN as u32).to_le_bytes());
        h[H_BODY_HASH..H_BODY_HASH + 32].copy_from_slice(self.body.finalize().as_bytes());
        let check = header_check(&h);
        h[H_CHECK..].copy_from_slice(&check);
        let dest = self.dest.clone();
        let io = |e| crate::output::write_error(&dest, e);
        self.out.seek(SeekFrom::Start(0)).map_err(io)?;
        self.out.write_all(&h).map_err(io)?;
        self.out.flush().map_err(io)?;
        Ok((self.out, file_len))
    }
}

/// Result of a full verification scan.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Names of tensors whose checksum does not match.
    pub bad_tensors: Vec<String>,
    /// Whether the BLAKE3 of everything after the header matches.
    pub body_ok: bool,
    /// Non-zero padding or invalid codes found, by tensor name.
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.bad_tensors.is_empty() && self.body_ok && self.problems.is_empty()
    }
}

/// Full scan: recomputes every tensor checksum in parallel, and the body checksum.
pub fn verify(index: &Index, bytes: &[u8]) -> VerifyReport {
    use rayon::prelude::*;
    let (bad, body) = rayon::join(
        || {
            index
                .entries
                .par_iter()
                .filter(|e| blake3::hash(index.data(bytes, e)).as_bytes() != &e.blake3)
                .map(|e| e.name.clone())
                .collect::<Vec<_>>()
        },
        || {
            let mut h = blake3::Hasher::new();
            h.update_rayon(&bytes[HEADER_LEN..]);
            *h.finalize().as_bytes() == index.body_blake3
        },
    );
    let mut problems: Vec<String> = index
        .entries
        .par_iter()
        .filter(|e| {
            e.dtype.is_packed() && !crate::quant::packed_is_canonical(e, index.data(bytes, e))
        })
        .map(|e| {
            let what = match e.dtype {
                DType::T2 => "invalid code 3 or non-zero padding in packed data",
                DType::TL => {
                    "invalid TL codes (index 14 or 15, or a negated zero) or non-zero padding"
                }
                _ => "non-zero padding in packed data",
            };
            format!("{}: {what}", e.name)
        })
        .collect();
    // NaN or infinity in float data (norms, embeddings, int8 row scales): checksums cannot tell
    // a damaged value its writer stored from a good one
    problems.extend(
        index
            .entries
            .par_iter()
            .filter_map(|e| {
                let f = crate::quant::Float::from_dtype(e.dtype)?;
                let i = crate::quant::first_non_finite(f, index.data(bytes, e))?;
                Some(format!("{}: element {i} is NaN or infinite", e.name))
            })
            .collect::<Vec<_>>(),
    );
    for e in index.entries.iter().filter(|e| e.dtype == DType::Q4) {
        if let Some(r) = crate::quant::q4_first_bad_row(index.data(bytes, e), e.rows_cols().1) {
            problems.push(format!(
                "{}: row {r} has a non-finite Q4 scale or padding that is not code 8",
                e.name
            ));
        }
    }
    // Alignment padding between tensors (and before the index) MUST be zero (formats/bnet.md
    // §3); the body checksum covers it, but a file can be consistent and still break the rule.
    for (i, e) in index.entries.iter().enumerate() {
        let end = (e.offset + e.len) as usize;
        let next = match index.entries.get(i + 1) {
            Some(n) => n.offset as usize,
            None => align_up(end as u64, 8).unwrap_or(end as u64) as usize,
        };
        if bytes
            .get(end..next)
            .is_some_and(|pad| pad.iter().any(|&b| b != 0))
        {
            problems.push(format!("{}: non-zero padding after the tensor", e.name));
        }
    }
    VerifyReport {
        bad_tensors: bad,
        body_ok: body,
        problems,
    }
}
