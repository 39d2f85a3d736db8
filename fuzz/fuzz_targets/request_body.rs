#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bitnet_serve::fuzzing::request_body(data));
