//! One input of each fuzz target (fuzz/fuzz_targets), shared with the replay test that CI runs on stable:
//! every input must give a value or a clean error, never a panic.

use sha2::{Digest, Sha256};

use crate::{BitnetFile, DATA_ALIGN, MAGIC, PREAMBLE_LEN, VERSION_MAJOR};

/// Raw file bytes through the reader.
pub fn file_bytes(data: &[u8]) {
    if let Ok(f) = BitnetFile::from_bytes(data.to_vec()) {
        let _ = f.verify_checksums(|_| {});
        let _ = f.header().config.validate();
    }
}

/// `data` as the header JSON of a file whose preamble and checksum are right (the checksum would stop a
/// byte-level fuzzer at the door), followed by 4 KiB of data.
pub fn header_json(data: &[u8]) {
    let header_len = data.len() as u64;
    let data_offset = (PREAMBLE_LEN as u64 + header_len).div_ceil(DATA_ALIGN) * DATA_ALIGN;
    let mut bytes = Vec::with_capacity(data_offset as usize + 4096);
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
    bytes.extend_from_slice(&0u16.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&header_len.to_le_bytes());
    bytes.extend_from_slice(&data_offset.to_le_bytes());
    bytes.extend_from_slice(&Sha256::digest(data));
    bytes.extend_from_slice(data);
    bytes.resize(data_offset as usize + 4096, 0);
    file_bytes(&bytes);
}
