#![no_main]
//! Fuzz target `gguf_import`: the invariants are in `fuzz/src/lib.rs` (`check_gguf_import`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bitnet_tools_fuzz::check_gguf_import(data);
});
