#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bitnet_chat::fuzzing::tokenizer_json(data));
