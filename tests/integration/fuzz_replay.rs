//! Every input the fuzzers kept (fuzz/corpus/TARGET) and every crash they found and we fixed
//! (fuzz/regressions/TARGET) replayed on stable: each must give a value or a clean error, never a panic.
//! The fuzzing itself runs with `cargo +nightly fuzz run TARGET` (fuzz/README.md).

use std::path::Path;

use crate::util::repo_root;

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let d = repo_root().join("fuzz").join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let bytes = std::fs::read(&p).unwrap();
            let r = std::panic::catch_unwind(|| f(&bytes));
            assert!(r.is_ok(), "{} panicked", rel(&p));
            n += 1;
        }
    }
    n
}

fn rel(p: &Path) -> String {
    p.strip_prefix(repo_root())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// A fuzz target's name and its one-input function.
type Target = (&'static str, fn(&[u8]));

#[test]
fn every_fuzz_corpus_entry_gives_a_clean_result() {
    let targets: [Target; 8] = [
        ("bitnet_file", bitnet_format::fuzzing::file_bytes),
        ("bitnet_header", bitnet_format::fuzzing::header_json),
        ("gguf_file", bitnet_gguf::fuzzing::file_bytes),
        ("chat_template", bitnet_chat::fuzzing::template),
        ("tokenizer_json", bitnet_chat::fuzzing::tokenizer_json),
        ("request_body", bitnet_serve::fuzzing::request_body),
        (
            "checkpoint_folder",
            bitnet_convert::fuzzing::checkpoint_folder,
        ),
        (
            "checkpoint_reader",
            bitnet_convert::fuzzing::checkpoint_reader,
        ),
    ];
    for (name, f) in targets {
        let n = replay(name, f);
        assert!(n > 0, "fuzz/corpus/{name} is empty");
    }
}

#[test]
fn the_checkpoint_seeds_convert() {
    // The seeds must reach the end of a conversion, or the fuzzer explores only the early refusals.
    for seed in ["seed-single", "seed-sharded", "seed-untied"] {
        let data =
            std::fs::read(repo_root().join("fuzz/corpus/checkpoint_folder").join(seed)).unwrap();
        let report = bitnet_convert::fuzzing::convert_input(&data).expect("folder written");
        assert!(report.is_ok(), "{seed}: {}", report.unwrap_err());
    }
}
