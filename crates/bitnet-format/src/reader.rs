//! Reading a `.bitnet` file: parse and validate the preamble, header and directory (SPEC.md sections 2-3),
//! then hand out tensor bytes straight from the map.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{FormatError, Result};
use crate::header::Features;
use crate::header::{Header, TensorEntry, TensorKind};
use crate::{DATA_ALIGN, MAGIC, PREAMBLE_LEN, VERSION_MAJOR, VERSION_MAJOR_MIN};

/// The fixed 64-byte preamble.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preamble {
    /// Major version (readers reject any but their own).
    pub major: u16,
    /// Minor version (readers accept any).
    pub minor: u16,
    /// Length of the JSON header in bytes.
    pub header_len: u64,
    /// Offset of the data section, a multiple of 64.
    pub data_offset: u64,
    /// SHA-256 of the header bytes.
    pub header_sha256: [u8; 32],
}

impl Preamble {
    /// Parses and checks the preamble at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Preamble> {
        if bytes.len() < 8 || bytes[..8] != MAGIC {
            return Err(FormatError::BadMagic {
                found: bytes[..bytes.len().min(8)].to_vec(),
                expected: MAGIC.to_vec(),
            });
        }
        if bytes.len() < PREAMBLE_LEN {
            return Err(FormatError::Truncated {
                what: "the preamble".into(),
                needed: PREAMBLE_LEN as u64,
                actual: bytes.len() as u64,
            });
        }
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let (major, minor) = (u16_at(8), u16_at(10));
        if !(VERSION_MAJOR_MIN..=VERSION_MAJOR).contains(&major) {
            return Err(FormatError::UnsupportedVersion {
                major,
                minor,
                supported: VERSION_MAJOR,
            });
        }
        let header_len = u64_at(16);
        let data_offset = u64_at(24);
        let mut header_sha256 = [0u8; 32];
        header_sha256.copy_from_slice(&bytes[32..64]);
        let header_end = (PREAMBLE_LEN as u64)
            .checked_add(header_len)
            .ok_or_else(|| FormatError::field("header_len", format!("{header_len} overflows")))?;
        if data_offset < header_end || data_offset % DATA_ALIGN != 0 {
            return Err(FormatError::field(
                "data_offset",
                format!(
                    "{data_offset} must be a multiple of {DATA_ALIGN} at or after the header's end ({header_end})"
                ),
            ));
        }
        Ok(Preamble {
            major,
            minor,
            header_len,
            data_offset,
            header_sha256,
        })
    }
}

enum Storage {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Map(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// An open, validated `.bitnet` file.
///
/// Validation checks the structure (magic, version, bounds, alignment, lengths, overlaps, header checksum),
/// not the tensor checksums: [`BitnetFile::verify_checksums`] reads every byte and is left to the caller.
pub struct BitnetFile {
    storage: Storage,
    path: Option<PathBuf>,
    preamble: Preamble,
    header: Header,
    features: Features,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for BitnetFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BitnetFile")
            .field("path", &self.path)
            .field("preamble", &self.preamble)
            .finish()
    }
}

/// A tensor whose bytes do not hash to the directory's checksum.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChecksumMismatch {
    /// Tensor name.
    pub name: String,
    /// Checksum in the directory.
    pub expected: String,
    /// Checksum of the bytes in the file.
    pub actual: String,
}

/// What a file in a format people confuse with ours is, and what to do with it.
fn other_format(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&MAGIC) {
        return None;
    }
    if bytes.starts_with(b"GGUF") {
        return Some(
            "a GGUF file, not a .bitnet file: convert it with `bitnet convert FILE.gguf -o model.bitnet`",
        );
    }
    // safetensors: an 8-byte little-endian header length, then the JSON header.
    if bytes.len() > 8 && bytes[8] == b'{' {
        return Some(
            "a safetensors file, not a .bitnet file: convert the checkpoint folder that holds it with \
             `bitnet convert FOLDER -o model.bitnet`",
        );
    }
    None
}

impl BitnetFile {
    /// Maps `path` read-only and validates it. Every error names `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<BitnetFile> {
        let path = path.as_ref();
        let not_bitnet = |what: &str| FormatError::NotBitnet {
            path: path.to_path_buf(),
            what: what.to_string(),
        };
        if path.is_dir() {
            return Err(not_bitnet(if path.join("config.json").is_file() {
                "a Hugging Face checkpoint folder, not a .bitnet file: convert it with `bitnet convert FOLDER -o \
                 model.bitnet` (or give the folder to `bitnet run`, which converts it once)"
            } else {
                "a folder, not a .bitnet file"
            }));
        }
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        let meta = file.metadata().map_err(|e| FormatError::io(path, e))?;
        if !meta.is_file() {
            return Err(not_bitnet(
                "not a regular file (a .bitnet file is read from a regular file)",
            ));
        }
        let storage = if meta.len() == 0 {
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and private to this process. SPEC.md's readers assume the file
            // is not truncated while mapped (that would raise SIGBUS on access); `convert` never rewrites a
            // file in place, it renames a new one over it, which leaves this mapping intact.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
            Storage::Map(map)
        };
        if let Some(what) = other_format(storage.bytes()) {
            return Err(not_bitnet(what));
        }
        let mut f = Self::from_storage(storage).map_err(|e| FormatError::InFile {
            path: path.to_path_buf(),
            error: Box::new(e),
        })?;
        f.path = Some(path.to_path_buf());
        Ok(f)
    }

    /// Validates an in-memory file (tests, fuzzing, small files).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<BitnetFile> {
        Self::from_storage(Storage::Owned(bytes))
    }

    fn from_storage(storage: Storage) -> Result<BitnetFile> {
        let bytes = storage.bytes();
        let file_len = bytes.len() as u64;
        let preamble = Preamble::parse(bytes)?;
        let header_end = PREAMBLE_LEN as u64 + preamble.header_len;
        if header_end > file_len || preamble.data_offset > file_len {
            return Err(FormatError::Truncated {
                what: "the header".into(),
                needed: header_end.max(preamble.data_offset),
                actual: file_len,
            });
        }
        let header_bytes = &bytes[PREAMBLE_LEN..header_end as usize];
        let digest: [u8; 32] = Sha256::digest(header_bytes).into();
        if digest != preamble.header_sha256 {
            return Err(FormatError::HeaderChecksum {
                expected: hex(&preamble.header_sha256),
                actual: hex(&digest),
            });
        }
        let mut header: Header = serde_json::from_slice(header_bytes)?;
        if preamble.major == 1 {
            // Version 1 had no feature list: its one computation is 2B4T's, with both sub-norms.
            if !header.features.is_empty() {
                return Err(FormatError::field(
                    "features",
                    "a version 1 file has no feature list",
                ));
            }
            header.features = Features::V1.names();
        }
        let features = Features::parse(&header.features)
            .map_err(|reason| FormatError::field("features", reason))?;
        header
            .config
            .validate()
            .map_err(|(field, reason)| FormatError::field(&format!("config.{field}"), reason))?;
        let vocab = header.config.vocab_size;
        let t = &header.tokenizer;
        for (field, id) in [
            ("tokenizer.bos_token_id", t.bos_token_id),
            ("tokenizer.pad_token_id", t.pad_token_id),
        ]
        .into_iter()
        .chain(
            t.eos_token_ids
                .iter()
                .map(|&i| ("tokenizer.eos_token_ids", Some(i))),
        ) {
            if let Some(id) = id
                && id as usize >= vocab
            {
                return Err(FormatError::field(
                    field,
                    format!("id {id} is outside the vocabulary of {vocab}"),
                ));
            }
        }
        let index = validate_directory(&header, preamble.data_offset, file_len)?;
        Ok(BitnetFile {
            storage,
            path: None,
            preamble,
            header,
            features,
            index,
        })
    }

    /// The path the file was opened from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The computation features the header lists (for a version 1 file, those it implies).
    pub fn features(&self) -> Features {
        self.features
    }

    /// The preamble.
    pub fn preamble(&self) -> &Preamble {
        &self.preamble
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The whole file's bytes (the map).
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// Total file length in bytes.
    pub fn len(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// Whether the file is empty (never true for a valid file).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The directory entry of a tensor.
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.index.get(name).map(|&i| &self.header.tensors[i])
    }

    /// A tensor's entry and data bytes.
    pub fn tensor(&self, name: &str) -> Result<(&TensorEntry, &[u8])> {
        let entry = self
            .entry(name)
            .ok_or_else(|| FormatError::MissingTensor(name.to_string()))?;
        Ok((entry, self.data(entry)))
    }

    /// The data bytes of a directory entry of this file.
    pub fn data(&self, entry: &TensorEntry) -> &[u8] {
        // Bounds were checked in `validate_directory`.
        &self.storage.bytes()[entry.offset as usize..(entry.offset + entry.length) as usize]
    }

    /// The embedded `tokenizer.json`, if any.
    pub fn tokenizer_json(&self) -> Option<&[u8]> {
        let name = self.header.tokenizer.tokenizer_json.as_deref()?;
        self.entry(name).map(|e| self.data(e))
    }

    /// Recomputes the SHA-256 of every tensor; `progress` is called with the bytes hashed so far.
    pub fn verify_checksums(&self, mut progress: impl FnMut(u64)) -> Vec<ChecksumMismatch> {
        let mut bad = Vec::new();
        let mut done = 0u64;
        for entry in &self.header.tensors {
            let mut hasher = Sha256::new();
            for chunk in self.data(entry).chunks(8 << 20) {
                hasher.update(chunk);
                done += chunk.len() as u64;
                progress(done);
            }
            let actual = hex(&hasher.finalize());
            if actual != entry.sha256 {
                bad.push(ChecksumMismatch {
                    name: entry.name.clone(),
                    expected: entry.sha256.clone(),
                    actual,
                });
            }
        }
        bad
    }
}

fn validate_directory(
    header: &Header,
    data_offset: u64,
    file_len: u64,
) -> Result<HashMap<String, usize>> {
    let mut index = HashMap::with_capacity(header.tensors.len());
    let mut spans = Vec::with_capacity(header.tensors.len());
    for (i, t) in header.tensors.iter().enumerate() {
        if index.insert(t.name.clone(), i).is_some() {
            return Err(FormatError::tensor(
                &t.name,
                "appears twice in the directory",
            ));
        }
        let expected = t
            .kind
            .byte_len(&t.shape)
            .map_err(|r| FormatError::tensor(&t.name, r))?;
        if t.length != expected {
            return Err(FormatError::tensor(
                &t.name,
                format!(
                    "length is {} bytes, but a {} tensor of shape {:?} takes {expected}",
                    t.length,
                    t.kind.as_str(),
                    t.shape
                ),
            ));
        }
        if t.offset % DATA_ALIGN != 0 || t.offset < data_offset {
            return Err(FormatError::tensor(
                &t.name,
                format!(
                    "offset {} must be a multiple of {DATA_ALIGN} in the data section (from {data_offset})",
                    t.offset
                ),
            ));
        }
        let end = t
            .offset
            .checked_add(t.length)
            .ok_or_else(|| FormatError::tensor(&t.name, "offset + length overflows"))?;
        if end > file_len {
            return Err(FormatError::Truncated {
                what: format!("tensor `{}`", t.name),
                needed: end,
                actual: file_len,
            });
        }
        let scale_needed = t.kind == TensorKind::TernaryR16;
        match (scale_needed, t.scale_bits) {
            (true, None) => {
                return Err(FormatError::tensor(
                    &t.name,
                    "a ternary_r16 tensor needs `scale_bits`",
                ));
            }
            (true, Some(bits)) if !f32::from_bits(bits).is_finite() => {
                return Err(FormatError::tensor(&t.name, "scale is not a finite number"));
            }
            (false, Some(_)) => {
                return Err(FormatError::tensor(
                    &t.name,
                    format!("a {} tensor has no `scale_bits`", t.kind.as_str()),
                ));
            }
            _ => {}
        }
        if t.sha256.len() != 64
            || !t
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(FormatError::tensor(
                &t.name,
                "sha256 must be 64 lower-case hex digits",
            ));
        }
        spans.push((t.offset, end, i));
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            let (a, b) = (&header.tensors[w[0].2].name, &header.tensors[w[1].2].name);
            return Err(FormatError::tensor(b, format!("overlaps tensor `{a}`")));
        }
    }
    if let Some(name) = &header.tokenizer.tokenizer_json {
        match index.get(name) {
            Some(&i) if header.tensors[i].kind == TensorKind::Bytes => {}
            Some(_) => {
                return Err(FormatError::field(
                    "tokenizer.tokenizer_json",
                    format!("`{name}` is not a bytes tensor"),
                ));
            }
            None => {
                return Err(FormatError::field(
                    "tokenizer.tokenizer_json",
                    format!("names `{name}`, which is not in the directory"),
                ));
            }
        }
    }
    Ok(index)
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
