#![no_main]
//! Fuzz target `tokenizer_prompt`: the invariants are in `fuzz/src/lib.rs` (`check_tokenizer`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bitnet_tools_fuzz::check_tokenizer(data);
});
