//! On-disk formats. Each has a written specification in `formats/`.

pub mod bnet;

use crate::error::{Error, Result};
use memmap2::Mmap;
use std::path::Path;

/// A `.bnet` file mapped into memory with its index parsed (O(1) in the file size).
pub struct BnetFile {
    pub map: Mmap,
    pub index: bnet::Index,
}

impl BnetFile {
    pub fn open(path: &Path) -> Result<BnetFile> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only mapping; we assume no other process truncates the file while it
        // is open (the usual contract of mmap-based model loaders).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let index = bnet::Index::parse(&map[..])?;
        Ok(BnetFile { map, index })
    }

    /// Bytes of a tensor, straight from the mapping (64-byte aligned).
    pub fn data(&self, e: &bnet::Entry) -> &[u8] {
        self.index.data(&self.map, e)
    }
}

/// True when the file starts with the `.bnet` magic.
pub fn is_bnet(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == bnet::MAGIC
}
