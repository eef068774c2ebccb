//! GGUF (formats/gguf.md): a zero-copy reader over `&[u8]` that treats the file as hostile,
//! and a streaming writer. Only little-endian version 2 and 3 files are read; we write v3.

use super::ggml::{Dialect, GgmlType};
use crate::error::{Error, Result};
use std::collections::HashSet;
use std::io::Write;

pub const MAGIC: [u8; 4] = *b"GGUF";
pub const VERSION: u32 = 3;
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Caps on untrusted sizes (formats/gguf.md §6). Counts are also bounded by the bytes left.
pub const MAX_STRING: u64 = 16 << 20;
pub const MAX_KEY: u64 = 65535;
pub const MAX_NAME: u64 = 255;
/// Elements of one array, and of all arrays of a file together: each becomes a ~32-byte
/// value, so this bounds the reader's memory (the largest real vocabularies are ~300k).
pub const MAX_ARRAY: u64 = 1 << 22;
pub const MAX_ARRAY_TOTAL: u64 = 1 << 23;
pub const MAX_DEPTH: usize = 3;
pub const MAX_TENSORS: u64 = 1 << 20;
pub const MAX_KV: u64 = 1 << 20;
pub const MAX_DIMS: usize = 4;
/// Largest `general.alignment` accepted.
pub const MAX_ALIGNMENT: u64 = 1 << 20;

/// A metadata value (GGUF value types 0–12).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type id and elements (all of that type).
    Array(u32, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(..) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
    /// Any integer type as u64 (negative values are `None`).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, a) => Some(a),
            _ => None,
        }
    }
    /// A short rendering for people: arrays are summarized.
    pub fn summary(&self) -> String {
        match self {
            Value::Str(s) if s.chars().count() > 60 => {
                format!(
                    "{:?}… ({} bytes)",
                    s.chars().take(60).collect::<String>(),
                    s.len()
                )
            }
            Value::Str(s) => format!("{s:?}"),
            Value::Array(t, a) => format!("[{} x {}]", a.len(), type_name(*t)),
            Value::Bool(b) => b.to_string(),
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            v => v
                .as_u64()
                .map_or_else(|| format!("{v:?}"), |n| n.to_string()),
        }
    }
}

fn type_name(t: u32) -> &'static str {
    [
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64",
        "f64",
    ]
    .get(t as usize)
    .copied()
    .unwrap_or("?")
}

/// One tensor: its name, dims (ne0 first, the contiguous one), type and data range.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute offset in the file.
    pub offset: u64,
    pub len: u64,
}

impl TensorInfo {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset as usize..(self.offset + self.len) as usize
    }
    /// Rows and row length (ne0) of the tensor seen as a matrix.
    pub fn rows_cols(&self) -> (u64, u64) {
        let k = self.dims[0];
        (self.dims.iter().product::<u64>() / k, k)
    }
}

/// A parsed GGUF header: metadata, tensor infos and where the data starts.
#[derive(Clone, Debug)]
pub struct Gguf {
    pub version: u32,
    pub kv: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
    pub dialect: Dialect,
    /// The dialect is bitnet.cpp's only because the caller said so (`--bitnet-cpp`): the file
    /// does not say it comes from bitnet.cpp, so every later read of it needs the flag too.
    pub dialect_forced: bool,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::gguf(msg.into())
}

/// A bounds-checked little-endian cursor.
struct Cur<'a> {
    b: &'a [u8],
    pos: usize,
    /// Array elements read so far (capped by `MAX_ARRAY_TOTAL`).
    elements: u64,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                bad(format!(
                    "truncated file: {what} at byte {} runs past the end",
                    self.pos
                ))
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N as u64, what)?.try_into().expect("N bytes"))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn left(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }
    /// A count that must fit in the bytes left at `min` bytes per item, and under `cap`.
    fn count(&mut self, what: &str, min: u64, cap: u64) -> Result<u64> {
        let n = self.u64(what)?;
        if n > cap || n.saturating_mul(min) > self.left() {
            return Err(bad(format!(
                "{what} {n} is larger than the file or the limit of {cap}: the file is damaged or hostile"
            )));
        }
        Ok(n)
    }
    fn string(&mut self, what: &str, cap: u64) -> Result<String> {
        let n = self.u64(what)?;
        if n > cap {
            return Err(bad(format!("{what} is {n} bytes, over the limit of {cap}")));
        }
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| bad(format!("{what} is not valid UTF-8")))
    }
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        let w = key;
        Ok(match ty {
            0 => Value::U8(self.arr::<1>(w)?[0]),
            1 => Value::I8(self.arr::<1>(w)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr(w)?)),
            3 => Value::I16(i16::from_le_bytes(self.arr(w)?)),
            4 => Value::U32(self.u32(w)?),
            5 => Value::I32(i32::from_le_bytes(self.arr(w)?)),
            6 => Value::F32(f32::from_le_bytes(self.arr(w)?)),
            7 => match self.arr::<1>(w)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(bad(format!("{key}: bool byte {b} is neither 0 nor 1"))),
            },
            8 => Value::Str(self.string(key, MAX_STRING)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(bad(format!("{key}: arrays nested deeper than {MAX_DEPTH}")));
                }
                let et = self.u32(w)?;
                let min = match et {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => return Err(bad(format!("{key}: unknown array element type {et}"))),
                };
                let n = self.count(&format!("{key}: array length"), min, MAX_ARRAY)?;
                self.elements += n;
                if self.elements > MAX_ARRAY_TOTAL {
                    return Err(bad(format!(
                        "{key}: more than {MAX_ARRAY_TOTAL} array elements in the file"
                    )));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(et, key, depth + 1)?);
                }
                Value::Array(et, v)
            }
            10 => Value::U64(self.u64(w)?),
            11 => Value::I64(i64::from_le_bytes(self.arr(w)?)),
            12 => Value::F64(f64::from_le_bytes(self.arr(w)?)),
            _ => return Err(bad(format!("{key}: unknown value type {ty}"))),
        })
    }
}

/// Our key saying which ggml's type ids a file uses (written with I2_S exports).
pub const TYPE_IDS_KEY: &str = "bitnet_tools.ggml_type_ids";
/// Architecture names only bitnet.cpp writes; their files use bitnet.cpp's type ids.
pub const BITNET_CPP_ARCHS: [&str; 2] = ["bitnet-b1.58", "bitnet-25"];

impl Gguf {
    /// Parses header, metadata and tensor infos, checking every offset and size against the
    /// file. `bitnet_cpp` forces bitnet.cpp's type ids; otherwise they apply only when the
    /// file says it comes from bitnet.cpp (formats/gguf.md §5).
    pub fn parse(b: &[u8], bitnet_cpp: bool) -> Result<Gguf> {
        let mut c = Cur {
            b,
            pos: 0,
            elements: 0,
        };
        if c.arr::<4>("magic")? != MAGIC {
            return Err(bad("not a GGUF file (no GGUF magic)"));
        }
        let version = c.u32("version")?;
        if version == 0x0300_0000 || version == 0x0200_0000 {
            return Err(bad("big-endian GGUF files are not supported"));
        }
        if !(2..=3).contains(&version) {
            return Err(bad(format!(
                "version {version} is not supported (this build reads versions 2 and 3)"
            )));
        }
        let n_tensors = c.count("tensor count", 24, MAX_TENSORS)?;
        let n_kv = c.count("metadata count", 13, MAX_KV)?;
        let mut kv = Vec::with_capacity(n_kv as usize);
        let mut keys = HashSet::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key", MAX_KEY)?;
            let ty = c.u32("value type")?;
            let v = c.value(ty, &key, 0)?;
            if !keys.insert(key.clone()) {
                return Err(bad(format!("metadata key {key} appears twice")));
            }
            kv.push((key, v));
        }
        let get = |k: &str| kv.iter().find(|(n, _)| n == k).map(|(_, v)| v);
        let alignment = match get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if a.is_power_of_two() && (*a as u64) <= MAX_ALIGNMENT => *a as u64,
            Some(v) => {
                return Err(bad(format!(
                    "general.alignment {} is not a u32 power of two up to {MAX_ALIGNMENT}",
                    v.summary()
                )))
            }
        };
        let arch = get("general.architecture").and_then(Value::as_str);
        let from_bitnet_cpp = arch.is_some_and(|a| BITNET_CPP_ARCHS.contains(&a))
            || get(TYPE_IDS_KEY).and_then(Value::as_str) == Some("bitnet.cpp");
        let dialect = if bitnet_cpp || from_bitnet_cpp {
            Dialect::BitnetCpp
        } else {
            Dialect::Mainline
        };

        let mut raw = Vec::with_capacity(n_tensors as usize);
        let mut names = HashSet::new();
        for _ in 0..n_tensors {
            let name = c.string("tensor name", MAX_NAME)?;
            let nd = c.u32("tensor dimension count")? as usize;
            if nd == 0 || nd > MAX_DIMS {
                return Err(bad(format!(
                    "tensor {name}: {nd} dimensions (1 to {MAX_DIMS} allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(nd);
            for _ in 0..nd {
                let d = c.u64("tensor dimension")?;
                if d == 0 || d > i64::MAX as u64 {
                    return Err(bad(format!("tensor {name}: dimension {d} is out of range")));
                }
                dims.push(d);
            }
            let id = c.u32("tensor type")?;
            let ty =
                GgmlType::from_id(id, dialect).map_err(|e| bad(format!("tensor {name}: {e}")))?;
            let rel = c.u64("tensor offset")?;
            let len = ty
                .data_len(&dims)
                .map_err(|e| bad(format!("tensor {name}: {e}")))?;
            if !names.insert(name.clone()) {
                return Err(bad(format!("tensor {name} appears twice")));
            }
            raw.push((name, dims, ty, rel, len));
        }
        let data_offset =
            super::bnet::align_up(c.pos as u64, alignment).ok_or_else(|| bad("offset overflow"))?;
        let file_len = b.len() as u64;
        if data_offset > file_len && n_tensors > 0 {
            return Err(bad("truncated file: the tensor data section is missing"));
        }
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ty, rel, len) in raw {
            if rel % alignment != 0 {
                return Err(bad(format!(
                    "tensor {name}: offset {rel} is not a multiple of the alignment {alignment}"
                )));
            }
            let offset = data_offset
                .checked_add(rel)
                .filter(|o| o.checked_add(len).is_some_and(|e| e <= file_len))
                .ok_or_else(|| {
                    bad(format!(
                        "tensor {name}: data ({len} bytes at {rel}) runs past the end of the file; it is truncated"
                    ))
                })?;
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                len,
            });
        }
        // No overlaps and no holes: in offset order each tensor starts at the aligned end of
        // the one before (writers pad, nothing else).
        let mut order: Vec<&TensorInfo> = tensors.iter().collect();
        order.sort_by_key(|t| t.offset);
        let mut end = data_offset;
        for t in &order {
            let expect =
                super::bnet::align_up(end, alignment).ok_or_else(|| bad("offset overflow"))?;
            if t.offset < end {
                return Err(bad(format!(
                    "tensor {} overlaps the tensor before it",
                    t.name
                )));
            }
            if t.offset != expect {
                return Err(bad(format!(
                    "tensor {}: {} unexplained bytes before it (a hole in the data section)",
                    t.name,
                    t.offset - end
                )));
            }
            end = t.offset + t.len;
        }
        Ok(Gguf {
            version,
            kv,
            tensors,
            alignment,
            data_offset,
            dialect,
            dialect_forced: bitnet_cpp && !from_bitnet_cpp,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }
}

/// True when the file starts with the GGUF magic.
pub fn is_gguf(path: &std::path::Path) -> bool {
    super::starts_with(path, &MAGIC)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::Str(s) => put_str(out, s),
        Value::Array(t, a) => {
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for x in a {
                put_value(out, x);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// A tensor to be written: name, dims (ne0 first) and type; its size follows from the type.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

/// Streaming writer: the header (metadata and every tensor info with its offset) is written
/// first, then each tensor's bytes in the planned order through `tensor_data`.
pub struct Writer<W: Write> {
    out: W,
    lens: Vec<u64>,
    next: usize,
    written: u64,
    alignment: u64,
    dest: std::path::PathBuf,
}

impl<W: Write> Writer<W> {
    pub fn new(
        mut out: W,
        dest: &std::path::Path,
        kv: &[(String, Value)],
        tensors: &[PlannedTensor],
    ) -> Result<Self> {
        let alignment = DEFAULT_ALIGNMENT;
        let mut h = Vec::new();
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(kv.len() as u64 + 1).to_le_bytes());
        put_str(&mut h, "general.alignment");
        h.extend_from_slice(&4u32.to_le_bytes());
        h.extend_from_slice(&(alignment as u32).to_le_bytes());
        for (k, v) in kv {
            assert!(
                k != "general.alignment",
                "the writer sets general.alignment"
            );
            put_str(&mut h, k);
            h.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut h, v);
        }
        let mut rel = 0u64;
        let mut lens = Vec::with_capacity(tensors.len());
        for t in tensors {
            if t.name.len() > 63 {
                return Err(Error::checkpoint(format!(
                    "tensor name {} is longer than ggml's 63-byte limit",
                    t.name
                )));
            }
            let len = t.ty.data_len(&t.dims).map_err(|e| {
                Error::checkpoint(format!(
                    "tensor {} cannot be stored as {}: {e}",
                    t.name, t.ty.name
                ))
            })?;
            put_str(&mut h, &t.name);
            h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.ty.id.to_le_bytes());
            h.extend_from_slice(&rel.to_le_bytes());
            rel = super::bnet::align_up(rel + len, alignment).expect("sizes fit in u64");
            lens.push(len);
        }
        let data_offset = super::bnet::align_up(h.len() as u64, alignment).expect("small");
        h.resize(data_offset as usize, 0);
        out.write_all(&h)
            .map_err(|e| crate::output::write_error(dest, e))?;
        Ok(Writer {
            out,
            lens,
            next: 0,
            written: 0,
            alignment,
            dest: dest.to_path_buf(),
        })
    }

    /// Appends bytes of the current tensor (in planned order); after its last byte the
    /// padding follows and the next tensor begins.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let len = *self
            .lens
            .get(self.next)
            .expect("more tensor data than planned");
        assert!(
            self.written + data.len() as u64 <= len,
            "tensor {} overflows",
            self.next
        );
        let io = |e| crate::output::write_error(&self.dest, e);
        self.out.write_all(data).map_err(io)?;
        self.written += data.len() as u64;
        if self.written == len {
            let pad = super::bnet::align_up(len, self.alignment).expect("fits") - len;
            self.out.write_all(&vec![0u8; pad as usize]).map_err(io)?;
            self.next += 1;
            self.written = 0;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<W> {
        assert_eq!(self.next, self.lens.len(), "every planned tensor written");
        self.out
            .flush()
            .map_err(|e| crate::output::write_error(&self.dest, e))?;
        Ok(self.out)
    }
}
