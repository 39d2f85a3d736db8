//! One input of the GGUF fuzz target, shared with the replay test CI runs on stable: a value or a clean
//! error, never a panic.

use crate::GgufFile;

/// Raw GGUF bytes through the reader, every tensor's data and every metadata value touched.
pub fn file_bytes(data: &[u8]) {
    if let Ok(f) = GgufFile::from_bytes(data.to_vec()) {
        for t in f.tensors() {
            let _ = f.data(t).len();
            let _ = t.shape();
        }
        for (k, v) in f.metadata() {
            let _ = (k.len(), format!("{v:?}").len());
        }
    }
}
