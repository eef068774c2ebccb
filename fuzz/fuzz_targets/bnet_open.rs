#![no_main]
//! Fuzz target `bnet_open`: the invariants are in `fuzz/src/lib.rs` (`check_bnet_open`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bitnet_tools_fuzz::check_bnet_open(data);
});
