//! Writing a `.bitnet` file: streamed tensor by tensor, atomically.
//!
//! The writer knows every tensor's kind and shape up front, so it lays out the offsets first, reserves room
//! for the header, then streams data in directory order while hashing it. [`FileWriter::finish`] writes the
//! header and preamble, syncs and renames the temporary file over the destination. Until then the data
//! lives in a temporary file beside the destination, which is removed if the writer is dropped unfinished.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{FormatError, Result};
use crate::header::{Header, TensorEntry, TensorKind};
use crate::reader::hex;
use crate::{DATA_ALIGN, MAGIC, PAGE_ALIGN, PREAMBLE_LEN, VERSION_MAJOR, VERSION_MINOR};

/// A tensor the writer will store: everything but the data, the checksum and the scale.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// Canonical name.
    pub name: String,
    /// Data layout.
    pub kind: TensorKind,
    /// Logical shape.
    pub shape: Vec<u64>,
    /// The source tensor it is made from.
    pub source: Option<String>,
}

struct Current {
    index: usize,
    hasher: Sha256,
    written: u64,
}

/// Streams a `.bitnet` file to a temporary path and renames it into place on [`FileWriter::finish`].
pub struct FileWriter {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    dest: PathBuf,
    header: Header,
    data_offset: u64,
    reserved_header: u64,
    pos: u64,
    next: usize,
    current: Option<Current>,
    finished: bool,
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

impl FileWriter {
    /// Plans the layout of `specs` and creates the temporary file beside `dest`.
    ///
    /// `header.tensors` is replaced by the directory built from `specs`, in that order.
    pub fn create(
        dest: impl AsRef<Path>,
        mut header: Header,
        specs: Vec<TensorSpec>,
    ) -> Result<FileWriter> {
        let dest = dest.as_ref().to_path_buf();
        let mut entries = Vec::with_capacity(specs.len());
        let mut seen = std::collections::HashSet::new();
        for s in specs {
            if !seen.insert(s.name.clone()) {
                return Err(FormatError::tensor(&s.name, "planned twice"));
            }
            let length = s
                .kind
                .byte_len(&s.shape)
                .map_err(|r| FormatError::tensor(&s.name, r))?;
            entries.push(TensorEntry {
                name: s.name,
                kind: s.kind,
                shape: s.shape,
                offset: u64::MAX,
                length,
                scale_bits: (s.kind == TensorKind::TernaryR16).then_some(u32::MAX),
                sha256: "0".repeat(64),
                source: s.source,
            });
        }
        header.tensors = entries;
        // Offsets, scales and checksums written as their widest values bound the final header length.
        let reserved_header = serde_json::to_vec(&header)?.len() as u64;
        let data_offset = align_up(PREAMBLE_LEN as u64 + reserved_header, PAGE_ALIGN);
        let mut pos = data_offset;
        for e in &mut header.tensors {
            let align = if e.length >= 1 << 20 {
                PAGE_ALIGN
            } else {
                DATA_ALIGN
            };
            e.offset = align_up(pos, align);
            pos = e.offset + e.length;
        }

        let tmp = Self::temp_path_for(&dest)?;
        Self::remove_stale_temps(&dest);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| FormatError::io(&tmp, e))?;
        let mut out = BufWriter::with_capacity(8 << 20, file);
        out.seek(SeekFrom::Start(data_offset))
            .map_err(|e| FormatError::io(&tmp, e))?;
        Ok(FileWriter {
            out: Some(out),
            tmp,
            dest,
            header,
            data_offset,
            reserved_header,
            pos: data_offset,
            next: 0,
            current: None,
            finished: false,
        })
    }

    /// The temporary file being written (removed if the writer is dropped before `finish`).
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// The temporary file [`FileWriter::create`] will write for `dest` (beside it, hidden, named after
    /// this process): known before it exists, so an interrupt handler can be told first.
    pub fn temp_path_for(dest: &Path) -> Result<PathBuf> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // The output is replaced by a rename: only ever over a regular file (never a directory, a device,
        // a FIFO or a link to one).
        if let Ok(meta) = std::fs::symlink_metadata(dest)
            && !meta.file_type().is_file()
        {
            return Err(FormatError::NotBitnet {
                path: dest.to_path_buf(),
                what: if meta.is_dir() {
                    "is a directory; give a file name".into()
                } else {
                    "is not a regular file (a device, FIFO, socket or link): the output must be a regular \
                     file or not exist"
                        .into()
                },
            });
        }
        let file_name = dest
            .file_name()
            .ok_or_else(|| FormatError::io(dest, std::io::Error::other("has no file name")))?
            .to_string_lossy()
            .into_owned();
        Ok(dir.join(format!(".{file_name}.tmp-{}", std::process::id())))
    }

    /// Removes the temporary files of earlier writes of `dest` whose process is gone (killed before it
    /// could clean up); returns how many. Linux only (a process is alive while `/proc/PID` exists).
    pub fn remove_stale_temps(dest: &Path) -> usize {
        let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else {
            return 0;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if !Path::new("/proc/self").exists() {
            return 0;
        }
        let prefix = format!(".{}.tmp-", name.to_string_lossy());
        let mut removed = 0;
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = n.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            let alive = Path::new(&format!("/proc/{pid}")).exists();
            if !alive
                && e.file_type().is_ok_and(|t| t.is_file())
                && std::fs::remove_file(e.path()).is_ok()
            {
                removed += 1;
            }
        }
        removed
    }

    /// The planned directory (offsets are final; checksums and scales are filled in as tensors are written).
    pub fn entries(&self) -> &[TensorEntry] {
        &self.header.tensors
    }

    fn out(&mut self) -> &mut BufWriter<File> {
        self.out.as_mut().expect("writer used after finish")
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        let tmp = self.tmp.clone();
        self.out()
            .write_all(bytes)
            .map_err(|e| FormatError::io(&tmp, e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Starts the next tensor of the plan, which must be `name`.
    pub fn begin_tensor(&mut self, name: &str) -> Result<()> {
        if let Some(cur) = &self.current {
            let open = &self.header.tensors[cur.index].name;
            return Err(FormatError::tensor(
                name,
                format!("began while `{open}` is still open"),
            ));
        }
        let Some(entry) = self.header.tensors.get(self.next) else {
            return Err(FormatError::tensor(
                name,
                "is not in the plan (all planned tensors are written)",
            ));
        };
        if entry.name != name {
            return Err(FormatError::tensor(
                name,
                format!(
                    "written out of order: the plan expects `{}` next",
                    entry.name
                ),
            ));
        }
        let pad = entry.offset - self.pos;
        self.write_raw(&vec![0u8; pad as usize])?;
        self.current = Some(Current {
            index: self.next,
            hasher: Sha256::new(),
            written: 0,
        });
        self.next += 1;
        Ok(())
    }

    /// Appends data to the open tensor.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(cur) = self.current.as_mut() else {
            return Err(FormatError::tensor("?", "data written with no tensor open"));
        };
        let entry = &self.header.tensors[cur.index];
        if cur.written + bytes.len() as u64 > entry.length {
            return Err(FormatError::tensor(
                &entry.name,
                format!("more than its {} bytes written", entry.length),
            ));
        }
        cur.hasher.update(bytes);
        cur.written += bytes.len() as u64;
        self.write_raw(bytes)
    }

    /// Closes the open tensor; `scale` is required for `ternary_r16` tensors and refused for others.
    pub fn end_tensor(&mut self, scale: Option<f32>) -> Result<()> {
        let Some(cur) = self.current.take() else {
            return Err(FormatError::tensor("?", "ended with no tensor open"));
        };
        let entry = &mut self.header.tensors[cur.index];
        if cur.written != entry.length {
            return Err(FormatError::tensor(
                &entry.name,
                format!("{} of {} bytes written", cur.written, entry.length),
            ));
        }
        match (entry.kind, scale) {
            (TensorKind::TernaryR16, Some(s)) if s.is_finite() => {
                entry.scale_bits = Some(s.to_bits())
            }
            (TensorKind::TernaryR16, _) => {
                return Err(FormatError::tensor(&entry.name, "needs a finite scale"));
            }
            (_, None) => {}
            (_, Some(_)) => return Err(FormatError::tensor(&entry.name, "takes no scale")),
        }
        entry.sha256 = hex(&cur.hasher.finalize());
        Ok(())
    }

    /// Writes a whole tensor at once.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8], scale: Option<f32>) -> Result<()> {
        self.begin_tensor(name)?;
        self.write(bytes)?;
        self.end_tensor(scale)
    }

    /// Writes the header and preamble, syncs, and renames the file into place. Returns the file length.
    pub fn finish(mut self) -> Result<u64> {
        if self.current.is_some() || self.next != self.header.tensors.len() {
            let missing = self
                .header
                .tensors
                .get(self.next)
                .map(|e| e.name.clone())
                .unwrap_or_default();
            return Err(FormatError::tensor(&missing, "was planned but not written"));
        }
        let header = serde_json::to_vec(&self.header)?;
        if header.len() as u64 > self.reserved_header {
            return Err(FormatError::field(
                "header",
                "grew past its reserved size (writer bug)",
            ));
        }
        let mut preamble = [0u8; PREAMBLE_LEN];
        preamble[..8].copy_from_slice(&MAGIC);
        preamble[8..10].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
        preamble[10..12].copy_from_slice(&VERSION_MINOR.to_le_bytes());
        preamble[16..24].copy_from_slice(&(header.len() as u64).to_le_bytes());
        preamble[24..32].copy_from_slice(&self.data_offset.to_le_bytes());
        preamble[32..64].copy_from_slice(&Sha256::digest(&header));
        let tmp = self.tmp.clone();
        let io = |e| FormatError::io(&tmp, e);
        let end = self.pos;
        let out = self.out.take().expect("writer used after finish");
        let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&preamble).map_err(io)?;
        file.write_all(&header).map_err(io)?;
        file.set_len(end).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| FormatError::io(&self.dest, e))?;
        self.finished = true;
        if let Some(dir) = self.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Persist the rename; a failure here does not undo a completed write.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(end)
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        if !self.finished {
            drop(self.out.take());
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
