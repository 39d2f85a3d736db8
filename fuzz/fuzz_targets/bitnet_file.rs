#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bitnet_format::fuzzing::file_bytes(data));
