//! The GGUF reader: a file mapped read-only and parsed with every length checked before it is used.
//!
//! Layout (all little-endian): magic `GGUF`, u32 version, u64 tensor count, u64 metadata count, the
//! metadata (key string, u32 type, value), the tensor directory (name string, u32 dimension count, u64
//! dimensions innermost first, u32 ggml type, u64 offset into the data section), padding to
//! `general.alignment`, then the data section.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{GgufError, Result};
use crate::types::{self, GgmlType};
use crate::value::{Value, ValueType};
use crate::{DEFAULT_ALIGNMENT, MAGIC};

/// Deepest nesting of arrays accepted (llama.cpp's files use one level; recursion is bounded by this).
const MAX_ARRAY_DEPTH: usize = 4;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;

/// One entry of the tensor directory, checked against the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Its name (`blk.0.attn_q.weight`).
    pub name: String,
    /// ggml dimensions, innermost (the row length) first.
    pub dims: Vec<u64>,
    /// Its type.
    pub ggml_type: GgmlType,
    /// Offset of its data from the start of the data section.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn num_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The logical shape outermost first, as `[rows, cols]` for a matrix.
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

enum Backing {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

/// A parsed GGUF file.
pub struct GgufFile {
    bytes: Backing,
    /// The format version (2 or 3).
    pub version: u32,
    metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    data_offset: u64,
    alignment: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let io = |error| GgufError::Io {
            path: path.to_path_buf(),
            error,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: a read-only private map of a model file that is not modified while it is read (a
        // concurrent truncation would raise SIGBUS, as with any mmap reader).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(Backing::Map(map))
    }

    /// Parses a file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse(Backing::Owned(bytes))
    }

    fn parse(bytes: Backing) -> Result<GgufFile> {
        let data: &[u8] = match &bytes {
            Backing::Map(m) => m,
            Backing::Owned(v) => v,
        };
        let mut c = Cursor {
            bytes: data,
            pos: 0,
        };
        let magic: [u8; 4] = c.take(4, "magic")?.try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(GgufError::Magic { found: magic });
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version { found: version });
        }
        let n_tensors = c.u64("tensor_count")?;
        let n_kv = c.u64("metadata_kv_count")?;
        // A key-value pair takes at least 13 bytes, a tensor-directory entry at least 32.
        c.check_count(n_kv, 13, "metadata_kv_count")?;
        let mut metadata = Vec::new();
        let mut index = HashMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            let tag = c.u32(&key)?;
            let ty = ValueType::from_tag(tag)
                .ok_or_else(|| GgufError::field(&key, format!("unknown value type {tag}")))?;
            let value = c.value(ty, &key, 0)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::field(&key, "appears twice in the metadata"));
            }
            metadata.push((key, value));
        }
        let alignment = match metadata.get(
            index
                .get("general.alignment")
                .copied()
                .unwrap_or(usize::MAX),
        ) {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if *a > 0 && a.is_power_of_two() => u64::from(*a),
            Some((_, v)) => {
                return Err(GgufError::field(
                    "general.alignment",
                    format!("{v:?}: expected a power of two as u32"),
                ));
            }
        };
        c.check_count(n_tensors, 32, "tensor_count")?;
        let mut tensors = Vec::new();
        let mut by_name = HashMap::new();
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor #{i} name"))?;
            let n_dims = c.u32(&format!("tensor `{name}` n_dims"))?;
            if !(1..=MAX_DIMS).contains(&n_dims) {
                return Err(GgufError::field(
                    format!("tensor `{name}` n_dims"),
                    format!("{n_dims}; a ggml tensor has 1 to {MAX_DIMS} dimensions"),
                ));
            }
            let mut dims = Vec::new();
            for d in 0..n_dims {
                dims.push(c.u64(&format!("tensor `{name}` dims[{d}]"))?);
            }
            let id = c.u32(&format!("tensor `{name}` type"))?;
            let ggml_type = GgmlType::from_id(id).ok_or_else(|| GgufError::UnsupportedType {
                tensor: name.clone(),
                id,
                name: types::id_name(id),
                supported: types::read_types_list(),
            })?;
            let offset = c.u64(&format!("tensor `{name}` offset"))?;
            if offset % alignment != 0 {
                return Err(GgufError::field(
                    format!("tensor `{name}` offset"),
                    format!("{offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            let len = ggml_type
                .byte_len(&dims)
                .map_err(|r| GgufError::field(format!("tensor `{name}` dims"), r))?;
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufError::field(
                    format!("tensor `{name}`"),
                    "appears twice in the tensor directory",
                ));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                len,
            });
        }
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = data.len() as u64;
        if data_offset > file_len {
            return Err(GgufError::field(
                "tensor data",
                format!(
                    "the data section would start at byte {data_offset}, past the end of the {file_len}-byte file"
                ),
            ));
        }
        let data_len = file_len - data_offset;
        for t in &tensors {
            let end = t.offset.checked_add(t.len).filter(|&e| e <= data_len);
            if end.is_none() {
                return Err(GgufError::field(
                    format!("tensor `{}` offset", t.name),
                    format!(
                        "its {} bytes at offset {} run past the end of the data section ({data_len} bytes; file truncated?)",
                        t.len, t.offset
                    ),
                ));
            }
        }
        let mut order: Vec<&TensorInfo> = tensors.iter().collect();
        order.sort_by_key(|t| t.offset);
        for w in order.windows(2) {
            if w[0].len > 0 && w[1].offset < w[0].offset + w[0].len {
                return Err(GgufError::field(
                    format!("tensor `{}` offset", w[1].name),
                    format!(
                        "{} lies inside tensor `{}` (bytes {}..{}): tensors overlap",
                        w[1].offset,
                        w[0].name,
                        w[0].offset,
                        w[0].offset + w[0].len
                    ),
                ));
            }
        }
        Ok(GgufFile {
            bytes,
            version,
            metadata,
            index,
            tensors,
            by_name,
            data_offset,
            alignment,
        })
    }

    /// The metadata, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The tensor directory, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor's bytes (bounds checked at parse time).
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        let all: &[u8] = match &self.bytes {
            Backing::Map(m) => m,
            Backing::Owned(v) => v,
        };
        let start = (self.data_offset + t.offset) as usize;
        &all[start..start + t.len as usize]
    }

    /// The tensor data alignment.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Where the data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, field: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::field(
                field,
                format!(
                    "needs {n} bytes at byte {}, but the file ends {} bytes later",
                    self.pos,
                    self.remaining()
                ),
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    /// Refuses a count whose smallest encoding is longer than what is left of the file.
    fn check_count(&self, count: u64, min_size: u64, field: &str) -> Result<()> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.remaining() => Ok(()),
            _ => Err(GgufError::field(
                field,
                format!(
                    "{count} entries of at least {min_size} bytes each cannot fit in the {} bytes left of the file",
                    self.remaining()
                ),
            )),
        }
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        Ok(self.take(N as u64, field)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn string(&mut self, field: &str) -> Result<String> {
        let len = self.u64(field)?;
        if len > self.remaining() {
            return Err(GgufError::field(
                field,
                format!(
                    "string length {len} runs past the end of the file ({} bytes left)",
                    self.remaining()
                ),
            ));
        }
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| GgufError::field(field, "string is not valid UTF-8"))
    }

    fn value(&mut self, ty: ValueType, field: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(field)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(field)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(field)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(field)?)),
            ValueType::U32 => Value::U32(self.u32(field)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(field)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(field)?)),
            ValueType::U64 => Value::U64(self.u64(field)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(field)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(field)?)),
            ValueType::Bool => match self.array::<1>(field)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(GgufError::field(
                        field,
                        format!("bool byte {b}, not 0 or 1"),
                    ));
                }
            },
            ValueType::String => Value::String(self.string(field)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::field(
                        field,
                        format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                    ));
                }
                let tag = self.u32(field)?;
                let elem = ValueType::from_tag(tag).ok_or_else(|| {
                    GgufError::field(field, format!("unknown array element type {tag}"))
                })?;
                let count = self.u64(field)?;
                if count
                    .checked_mul(elem.min_size())
                    .is_none_or(|n| n > self.remaining())
                {
                    return Err(GgufError::field(
                        field,
                        format!(
                            "array length {count} runs past the end of the file ({} bytes left)",
                            self.remaining()
                        ),
                    ));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, field, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }
}
