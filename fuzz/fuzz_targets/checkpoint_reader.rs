#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bitnet_convert::fuzzing::checkpoint_reader(data));
