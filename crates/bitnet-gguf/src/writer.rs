//! The GGUF writer: metadata and tensor directory first, then each tensor's data, in directory order,
//! every tensor aligned to [`DEFAULT_ALIGNMENT`](crate::DEFAULT_ALIGNMENT) bytes.

use std::io::{self, Write};

use crate::DEFAULT_ALIGNMENT;
use crate::types::GgmlType;
use crate::value::Value;

/// A tensor to write: its name, ggml dimensions (innermost first) and type.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorDesc {
    /// Name.
    pub name: String,
    /// ggml dimensions, innermost (the row length) first.
    pub dims: Vec<u64>,
    /// Type.
    pub ggml_type: GgmlType,
}

/// Streams a GGUF version 3 file into `W`.
pub struct GgufWriter<W: Write> {
    out: W,
    tensors: Vec<(TensorDesc, u64)>,
    next: usize,
    written: u64,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header, `metadata` and the directory of `tensors`; their data follows with
    /// [`GgufWriter::write_tensor`], in the same order.
    pub fn new(
        mut out: W,
        metadata: &[(String, Value)],
        tensors: Vec<TensorDesc>,
    ) -> io::Result<Self> {
        let mut head = Vec::new();
        head.extend_from_slice(&crate::MAGIC);
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            put_string(&mut head, key);
            head.extend_from_slice(&value.value_type().tag().to_le_bytes());
            put_value(&mut head, value);
        }
        let mut offset = 0u64;
        let mut placed = Vec::new();
        for t in tensors {
            let len = t.ggml_type.byte_len(&t.dims).map_err(invalid)?;
            put_string(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            placed.push((t, offset));
            offset = (offset + len).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
        }
        let padded = (head.len() as u64).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
        head.resize(padded as usize, 0);
        out.write_all(&head)?;
        Ok(GgufWriter {
            out,
            tensors: placed,
            next: 0,
            written: 0,
        })
    }

    /// Writes the data of the next tensor of the directory, which must be named `name` and be exactly as
    /// long as its type and dimensions imply.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let Some((t, offset)) = self.tensors.get(self.next) else {
            return Err(invalid(format!("tensor `{name}` is not in the directory")));
        };
        if t.name != name {
            return Err(invalid(format!(
                "expected tensor `{}`, got `{name}`",
                t.name
            )));
        }
        let len = t.ggml_type.byte_len(&t.dims).map_err(invalid)?;
        if bytes.len() as u64 != len {
            return Err(invalid(format!(
                "tensor `{name}`: {} bytes given, its type and dimensions take {len}",
                bytes.len()
            )));
        }
        let pad = offset - self.written;
        self.out.write_all(&vec![0u8; pad as usize])?;
        self.out.write_all(bytes)?;
        self.written = offset + len;
        self.next += 1;
        Ok(())
    }

    /// Checks that every tensor was written, flushes and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        if self.next != self.tensors.len() {
            return Err(invalid(format!(
                "{} of {} tensors written",
                self.next,
                self.tensors.len()
            )));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(ty, items) => {
            out.extend_from_slice(&ty.tag().to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}
