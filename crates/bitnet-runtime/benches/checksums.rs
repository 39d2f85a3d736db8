//! The cost of checking a file's tensor checksums before its first use, on a file with the 2B4T model's
//! shapes (random weights, bf16 embedding, ~1.2 GB), against a plain read of the same mapped bytes (a
//! sum of every 64-bit word, on as many threads) so the figure is a ratio to what memory gives.
//! Run with `cargo bench -p bitnet-runtime --bench checksums` (writes the file once into a temporary
//! folder, ~1.2 GB of disk).

use std::sync::{Arc, OnceLock};

use bitnet_format::BitnetFile;
use divan::Bencher;
use divan::counter::BytesCount;
use rayon::prelude::*;

fn main() {
    divan::main();
}

fn file() -> &'static (tempfile::TempDir, Arc<BitnetFile>) {
    static F: OnceLock<(tempfile::TempDir, Arc<BitnetFile>)> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("synthetic-2b4t.bitnet");
        let family = bitnet_model::synthetic::family("2b4t").expect("the 2b4t family");
        bitnet_model::synthetic::write(&path, &family, 42, false).expect("writing the model");
        let file = Arc::new(BitnetFile::open(&path).expect("opening the model"));
        (dir, file)
    })
}

fn tensor_bytes(f: &BitnetFile) -> usize {
    f.header().tensors.iter().map(|e| f.data(e).len()).sum()
}

/// Every tensor's SHA-256, as `run`, `chat` and `serve` check a file before its first use.
#[divan::bench(sample_count = 5, sample_size = 1)]
fn sha256_every_tensor(b: Bencher) {
    let f = &file().1;
    b.counter(BytesCount::new(tensor_bytes(f)))
        .bench(|| assert!(bitnet_runtime::integrity::mismatched(f).is_empty()));
}

/// A plain read of the same bytes on the same threads: the memory roof for the pass above.
#[divan::bench(sample_count = 5, sample_size = 1)]
fn read_every_tensor(b: Bencher) {
    let f = &file().1;
    b.counter(BytesCount::new(tensor_bytes(f))).bench(|| {
        f.header()
            .tensors
            .par_iter()
            .with_max_len(1)
            .map(|e| {
                f.data(e)
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                    .fold(0u64, u64::wrapping_add)
            })
            .reduce(|| 0, u64::wrapping_add)
    });
}
