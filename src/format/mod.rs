//! On-disk formats. Each has a written specification in `formats/`.

pub mod bnet;
pub mod ggml;
pub mod gguf;

use crate::error::{Error, Result};
use memmap2::Mmap;
use serde_json::{json, Value};
use std::path::Path;

/// Where [`BnetFile::unlinked`] has a container written.
pub type Sink = std::io::BufWriter<std::fs::File>;

/// A `.bnet` file mapped into memory with its index parsed (O(1) in the file size).
pub struct BnetFile {
    pub map: Mmap,
    pub index: bnet::Index,
}

impl BnetFile {
    pub fn open(path: &Path) -> Result<BnetFile> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        Self::from_file(&file, path)
    }

    /// A container that `write` builds in an unlinked temporary file (in TMPDIR; nothing is
    /// left behind however the process ends), mapped; `path` names its source in errors, and
    /// `what` ("the on-the-fly GGUF import") the work, should the temporary file fail.
    pub fn unlinked(
        what: &str,
        path: &Path,
        write: impl FnOnce(Sink, &Path) -> Result<Sink>,
    ) -> Result<BnetFile> {
        let temp_error = |e| crate::output::temp_error(what, e);
        let file = tempfile::tempfile().map_err(temp_error)?;
        let sink =
            std::io::BufWriter::with_capacity(8 << 20, file.try_clone().map_err(temp_error)?);
        // write errors name where the bytes go: the temporary directory, not the source
        let dest = std::env::temp_dir().join(format!("({what})"));
        write(sink, &dest)?
            .into_inner()
            .map_err(|e| temp_error(e.into_error()))?;
        Self::from_file(&file, path)
    }

    /// Maps an open file (e.g. an unlinked temporary one); `path` names it in errors.
    pub fn from_file(file: &std::fs::File, path: &Path) -> Result<BnetFile> {
        // mapping a directory or a device fails with a bare "No such device"
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            let what = if meta.is_dir() {
                "is a directory, not a .bnet file (a Hugging Face checkpoint directory is packed \
                 first: bitnet-pack DIR OUT.bnet)"
            } else {
                "is not a regular file; give a .bnet file"
            };
            let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
            return Err(Error::io(path, e));
        }
        // SAFETY: read-only mapping; we assume no other process truncates the file while it
        // is open (the usual contract of mmap-based model loaders).
        let map = unsafe { Mmap::map(file) }.map_err(|e| Error::io(path, e))?;
        let index = bnet::Index::parse(&map[..])?;
        Ok(BnetFile { map, index })
    }

    /// Bytes of a tensor, straight from the mapping (64-byte aligned).
    pub fn data(&self, e: &bnet::Entry) -> &[u8] {
        self.index.data(&self.map, e)
    }
}

/// True when the file starts with `magic` (unreadable or short files: false).
pub fn starts_with(path: &Path, magic: &[u8]) -> bool {
    use std::io::Read;
    let mut head = vec![0u8; magic.len()];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && head == magic
}

/// True when the file starts with the `.bnet` magic.
pub fn is_bnet(path: &Path) -> bool {
    starts_with(path, &bnet::MAGIC)
}

/// A safetensors header for tensors written in the given order, padded to 8 bytes.
/// Each item is (name, dtype name, shape, byte length).
pub fn safetensors_header(
    tensors: &[(String, &str, Vec<u64>, u64)],
    metadata: &serde_json::Map<String, Value>,
) -> Vec<u8> {
    let mut h = serde_json::Map::new();
    let mut off = 0u64;
    for (name, dtype, shape, len) in tensors {
        h.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [off, off + len]}),
        );
        off += len;
    }
    if !metadata.is_empty() {
        h.insert("__metadata__".into(), Value::Object(metadata.clone()));
    }
    let mut bytes = serde_json::to_vec(&Value::Object(h)).expect("serializes");
    while !bytes.len().is_multiple_of(8) {
        bytes.push(b' ');
    }
    let mut out = (bytes.len() as u64).to_le_bytes().to_vec();
    out.extend(bytes);
    out
}
