//! The SentencePiece `ModelProto` (protobuf wire format), read field by field.
//!
//! Only the fields the conversion needs are decoded (`sentencepiece_model.proto` numbers):
//!
//! | message | field | number |
//! |---|---|---|
//! | `ModelProto` | `pieces` (repeated `SentencePiece`) | 1 |
//! | | `trainer_spec` | 2 |
//! | | `normalizer_spec` | 3 |
//! | `SentencePiece` | `piece`, `score`, `type` | 1, 2, 3 |
//! | `TrainerSpec` | `model_type` | 3 |
//! | | `byte_fallback` | 35 |
//! | | `unk_id`, `bos_id`, `eos_id` | 40, 41, 42 |
//! | `NormalizerSpec` | `name`, `precompiled_charsmap` | 1, 2 |
//! | | `add_dummy_prefix`, `remove_extra_whitespaces` | 3, 4 |
//!
//! Every other field is skipped by its wire type, as any protobuf reader does. Every length and varint is
//! bounds-checked: a truncated or corrupt file is an error naming the byte offset, never a panic or an
//! out-of-range read. A repeated occurrence of a singular field overwrites the earlier one (protobuf's
//! merge rule for scalars).

/// The protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// The `type` of a piece (`ModelProto.SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    /// An ordinary piece (1, the default).
    Normal,
    /// `<unk>` (2).
    Unknown,
    /// A control symbol such as `<s>` and `</s>` (3): never produced from text.
    Control,
    /// A user-defined symbol (4): always one piece when it occurs in text.
    UserDefined,
    /// An unused piece (5).
    Unused,
    /// One byte, `<0x00>`..`<0xFF>`, used by byte fallback (6).
    Byte,
}

/// The segmentation algorithm (`TrainerSpec.ModelType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    /// Unigram language model (1, protobuf's default when the field is absent).
    Unigram,
    /// Byte-pair encoding (2): the LLaMA 2 family.
    Bpe,
    /// Whitespace-delimited words (3).
    Word,
    /// Characters (4).
    Char,
}

impl ModelType {
    /// The name SentencePiece's `--model_type` flag uses.
    pub fn name(self) -> &'static str {
        match self {
            ModelType::Unigram => "unigram",
            ModelType::Bpe => "bpe",
            ModelType::Word => "word",
            ModelType::Char => "char",
        }
    }
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// Its text, spaces written as `▁` (U+2581).
    pub piece: String,
    /// Its score (for BPE, minus its merge rank).
    pub score: f32,
    /// Its kind.
    pub kind: PieceType,
}

/// The fields of a `tokenizer.model` the conversion reads.
#[derive(Debug, Clone, PartialEq)]
pub struct SentencePieceModel {
    /// The vocabulary; a piece's id is its index.
    pub pieces: Vec<Piece>,
    /// The segmentation algorithm.
    pub model_type: ModelType,
    /// Whether unknown characters are spelled out as `<0xNN>` byte pieces.
    pub byte_fallback: bool,
    /// Id of `<unk>` (-1: none).
    pub unk_id: i32,
    /// Id of `<s>` (-1: none).
    pub bos_id: i32,
    /// Id of `</s>` (-1: none).
    pub eos_id: i32,
    /// The normalization rule's name (`identity` for LLaMA 2, `nmt_nfkc` by default).
    pub normalizer_name: String,
    /// Whether the normalizer carries a compiled character map (a non-identity normalization).
    pub has_charsmap: bool,
    /// Whether a `▁` is put in front of the text.
    pub add_dummy_prefix: bool,
    /// Whether runs of spaces are collapsed and leading/trailing ones removed.
    pub remove_extra_whitespaces: bool,
}

/// A position in the buffer and the end of the message being read.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader {
            buf,
            pos: 0,
            end: buf.len(),
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.end
    }

    fn varint(&mut self) -> Result<u64, String> {
        let start = self.pos;
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf[..self.end].get(self.pos) else {
                return Err(format!("truncated varint at byte {start}"));
            };
            self.pos += 1;
            // The tenth byte holds bit 63 only.
            if i == 9 && b > 1 {
                return Err(format!("varint at byte {start} overflows 64 bits"));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("varint at byte {start} is longer than 10 bytes"))
    }

    /// The next field's number and wire type.
    fn key(&mut self) -> Result<(u64, u8), String> {
        let at = self.pos;
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err(format!("field number 0 at byte {at}"));
        }
        Ok((field, (key & 7) as u8))
    }

    /// `n` bytes from the current position.
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], String> {
        let start = self.pos;
        let stop = usize::try_from(n)
            .ok()
            .and_then(|n| start.checked_add(n))
            .filter(|&stop| stop <= self.end)
            .ok_or_else(|| {
                format!(
                    "{what} at byte {start} claims {n} bytes; only {} remain",
                    self.end - start
                )
            })?;
        self.pos = stop;
        Ok(&self.buf[start..stop])
    }

    /// A length-delimited field's payload, as a reader over the same buffer (offsets stay absolute).
    fn sub(&mut self, what: &str) -> Result<Reader<'a>, String> {
        let len = self.varint()?;
        let start = self.pos;
        self.take(len, what)?;
        Ok(Reader {
            buf: self.buf,
            pos: start,
            end: self.pos,
        })
    }

    fn skip(&mut self, wire: u8, field: u64) -> Result<(), String> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8, "fixed64 field").map(drop),
            LEN => {
                let len = self.varint()?;
                self.take(len, "length-delimited field").map(drop)
            }
            FIXED32 => self.take(4, "fixed32 field").map(drop),
            other => Err(format!(
                "field {field} before byte {} has wire type {other}, which a SentencePiece model never uses",
                self.pos
            )),
        }
    }

    fn expect(&self, field: u64, wire: u8, want: u8, name: &str) -> Result<(), String> {
        if wire == want {
            Ok(())
        } else {
            Err(format!(
                "`{name}` (field {field}) before byte {} has wire type {wire}, expected {want}",
                self.pos
            ))
        }
    }

    fn string(&mut self, name: &str) -> Result<String, String> {
        let at = self.pos;
        let len = self.varint()?;
        let bytes = self.take(len, name)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| format!("`{name}` at byte {at} is not valid UTF-8"))
    }
}

/// An `int32` field: protobuf writes negative values as 64-bit two's complement, read back by truncation.
fn int32(v: u64) -> i32 {
    v as u32 as i32
}

impl SentencePieceModel {
    /// Reads a serialized `ModelProto`. The error says what is wrong and at which byte; the caller adds
    /// the file name.
    pub fn parse(buf: &[u8]) -> Result<SentencePieceModel, String> {
        let mut m = SentencePieceModel {
            pieces: Vec::new(),
            model_type: ModelType::Unigram,
            byte_fallback: false,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            normalizer_name: String::new(),
            has_charsmap: false,
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
        };
        let mut r = Reader::new(buf);
        while !r.at_end() {
            let (field, wire) = r.key()?;
            match field {
                1 => {
                    r.expect(field, wire, LEN, "pieces")?;
                    let index = m.pieces.len();
                    let piece = parse_piece(&mut r.sub("a piece")?)
                        .map_err(|e| format!("piece {index}: {e}"))?;
                    m.pieces.push(piece);
                }
                2 => {
                    r.expect(field, wire, LEN, "trainer_spec")?;
                    parse_trainer_spec(&mut r.sub("trainer_spec")?, &mut m)
                        .map_err(|e| format!("trainer_spec: {e}"))?;
                }
                3 => {
                    r.expect(field, wire, LEN, "normalizer_spec")?;
                    parse_normalizer_spec(&mut r.sub("normalizer_spec")?, &mut m)
                        .map_err(|e| format!("normalizer_spec: {e}"))?;
                }
                _ => r.skip(wire, field)?,
            }
        }
        Ok(m)
    }
}

fn parse_piece(r: &mut Reader<'_>) -> Result<Piece, String> {
    let mut piece = None;
    let mut score = 0.0;
    let mut kind = PieceType::Normal;
    while !r.at_end() {
        let (field, wire) = r.key()?;
        match field {
            1 => {
                r.expect(field, wire, LEN, "piece")?;
                piece = Some(r.string("piece")?);
            }
            2 => {
                r.expect(field, wire, FIXED32, "score")?;
                let b = r.take(4, "score")?;
                score = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            3 => {
                r.expect(field, wire, VARINT, "type")?;
                let at = r.pos;
                kind = match r.varint()? {
                    1 => PieceType::Normal,
                    2 => PieceType::Unknown,
                    3 => PieceType::Control,
                    4 => PieceType::UserDefined,
                    5 => PieceType::Unused,
                    6 => PieceType::Byte,
                    other => return Err(format!("unknown piece type {other} at byte {at}")),
                };
            }
            _ => r.skip(wire, field)?,
        }
    }
    match piece {
        Some(p) if !p.is_empty() => Ok(Piece {
            piece: p,
            score,
            kind,
        }),
        _ => Err("the piece text is empty or missing".to_string()),
    }
}

fn parse_trainer_spec(r: &mut Reader<'_>, m: &mut SentencePieceModel) -> Result<(), String> {
    while !r.at_end() {
        let (field, wire) = r.key()?;
        match field {
            3 => {
                r.expect(field, wire, VARINT, "model_type")?;
                let at = r.pos;
                m.model_type = match r.varint()? {
                    1 => ModelType::Unigram,
                    2 => ModelType::Bpe,
                    3 => ModelType::Word,
                    4 => ModelType::Char,
                    other => return Err(format!("unknown model_type {other} at byte {at}")),
                };
            }
            35 => {
                r.expect(field, wire, VARINT, "byte_fallback")?;
                m.byte_fallback = r.varint()? != 0;
            }
            40..=42 => {
                let name = ["unk_id", "bos_id", "eos_id"][(field - 40) as usize];
                r.expect(field, wire, VARINT, name)?;
                let v = int32(r.varint()?);
                match field {
                    40 => m.unk_id = v,
                    41 => m.bos_id = v,
                    _ => m.eos_id = v,
                }
            }
            _ => r.skip(wire, field)?,
        }
    }
    Ok(())
}

fn parse_normalizer_spec(r: &mut Reader<'_>, m: &mut SentencePieceModel) -> Result<(), String> {
    while !r.at_end() {
        let (field, wire) = r.key()?;
        match field {
            1 => {
                r.expect(field, wire, LEN, "name")?;
                m.normalizer_name = r.string("name")?;
            }
            2 => {
                r.expect(field, wire, LEN, "precompiled_charsmap")?;
                let len = r.varint()?;
                m.has_charsmap = !r.take(len, "precompiled_charsmap")?.is_empty();
            }
            3 => {
                r.expect(field, wire, VARINT, "add_dummy_prefix")?;
                m.add_dummy_prefix = r.varint()? != 0;
            }
            4 => {
                r.expect(field, wire, VARINT, "remove_extra_whitespaces")?;
                m.remove_extra_whitespaces = r.varint()? != 0;
            }
            _ => r.skip(wire, field)?,
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal protobuf writer for test inputs.
    pub(crate) fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    pub(crate) fn field_len(field: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | u64::from(LEN), out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    pub(crate) fn field_varint(field: u64, v: u64, out: &mut Vec<u8>) {
        varint(field << 3 | u64::from(VARINT), out);
        varint(v, out);
    }

    /// A model of `pieces` (text, type) with the given `model_type`.
    pub(crate) fn model(pieces: &[(&str, u64)], model_type: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (text, kind)) in pieces.iter().enumerate() {
            let mut p = Vec::new();
            field_len(1, text.as_bytes(), &mut p);
            varint(2 << 3 | u64::from(FIXED32), &mut p);
            p.extend_from_slice(&(-(i as f32)).to_le_bytes());
            field_varint(3, *kind, &mut p);
            field_len(1, &p, &mut out);
        }
        let mut spec = Vec::new();
        field_varint(3, model_type, &mut spec);
        field_varint(35, 1, &mut spec);
        // unk_id -1, written as protobuf writes a negative int32.
        field_varint(43, u64::MAX, &mut spec);
        field_len(2, &spec, &mut out);
        out
    }

    #[test]
    fn reads_pieces_specs_and_skips_unknown_fields() {
        let mut buf = model(&[("<unk>", 2), ("<s>", 3), ("▁a", 1), ("<0x41>", 6)], 2);
        // An unknown fixed64 and fixed32 field at the top level, and a normalizer spec.
        varint(9 << 3 | u64::from(FIXED64), &mut buf);
        buf.extend_from_slice(&[0; 8]);
        varint(10 << 3 | u64::from(FIXED32), &mut buf);
        buf.extend_from_slice(&[0; 4]);
        let mut norm = Vec::new();
        field_len(1, b"identity", &mut norm);
        field_varint(3, 0, &mut norm);
        field_varint(4, 0, &mut norm);
        field_len(3, &norm, &mut buf);
        let m = SentencePieceModel::parse(&buf).unwrap();
        assert_eq!(m.pieces.len(), 4);
        assert_eq!(m.pieces[2].piece, "▁a");
        assert_eq!(m.pieces[2].score, -2.0);
        assert_eq!(m.pieces[0].kind, PieceType::Unknown);
        assert_eq!(m.pieces[3].kind, PieceType::Byte);
        assert_eq!(m.model_type, ModelType::Bpe);
        assert!(m.byte_fallback);
        assert_eq!((m.unk_id, m.bos_id, m.eos_id), (0, 1, 2));
        assert_eq!(m.normalizer_name, "identity");
        assert!(!m.add_dummy_prefix && !m.remove_extra_whitespaces && !m.has_charsmap);
    }

    #[test]
    fn negative_int32_reads_back() {
        let mut spec = Vec::new();
        field_varint(43, u64::MAX, &mut spec); // pad_id -1: skipped
        field_varint(40, (-1i64) as u64, &mut spec);
        let mut buf = Vec::new();
        field_len(2, &spec, &mut buf);
        assert_eq!(SentencePieceModel::parse(&buf).unwrap().unk_id, -1);
    }

    #[test]
    fn malformed_input_is_an_error_with_the_offset() {
        let good = model(&[("<unk>", 2), ("▁a", 1)], 2);
        // Every truncation of a valid model fails cleanly (or parses a shorter valid prefix).
        for cut in 0..good.len() {
            let _ = SentencePieceModel::parse(&good[..cut]);
        }
        let cut = SentencePieceModel::parse(&good[..good.len() - 3]).unwrap_err();
        assert!(cut.contains("claims") || cut.contains("truncated"), "{cut}");
        // Field 10 (unknown, varint) with an 11-byte varint, then with a varint cut short.
        let mut overlong = vec![0x50];
        overlong.extend_from_slice(&[0xff; 9]);
        overlong.push(0x7f);
        let overlong = SentencePieceModel::parse(&overlong).unwrap_err();
        assert_eq!(overlong, "varint at byte 1 overflows 64 bits");
        let endless = SentencePieceModel::parse(&[0x50, 0x80]);
        assert_eq!(endless.unwrap_err(), "truncated varint at byte 1");
        // JSON bytes: '{' is field 15 with wire type 3 (a group).
        let json = SentencePieceModel::parse(b"{\"model\": 1}").unwrap_err();
        assert!(json.contains("wire type 3"), "{json}");
        let zero = SentencePieceModel::parse(&[0x00, 0x01]).unwrap_err();
        assert!(zero.contains("field number 0"), "{zero}");
        // A length far past the end.
        let huge = SentencePieceModel::parse(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]).unwrap_err();
        assert!(huge.contains("claims 4294967295 bytes"), "{huge}");
        // A piece with the wrong wire type for `score`, and one with non-UTF-8 text.
        let mut p = Vec::new();
        field_varint(2, 5, &mut p);
        let mut buf = Vec::new();
        field_len(1, &p, &mut buf);
        let wrong = SentencePieceModel::parse(&buf).unwrap_err();
        assert!(wrong.starts_with("piece 0: `score` (field 2)"), "{wrong}");
        let mut p = Vec::new();
        field_len(1, &[0xff, 0xfe], &mut p);
        let mut buf = Vec::new();
        field_len(1, &p, &mut buf);
        assert!(
            SentencePieceModel::parse(&buf)
                .unwrap_err()
                .contains("not valid UTF-8")
        );
    }
}
