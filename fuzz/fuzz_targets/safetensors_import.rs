#![no_main]
//! Fuzz target `safetensors_import`: the invariants are in `fuzz/src/lib.rs` (`check_safetensors`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bitnet_tools_fuzz::check_safetensors(data);
});
