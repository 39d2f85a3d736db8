//! The reader on files the tests write: a round trip through the writer, every malformed field the
//! reader must refuse (naming the field), and random corruptions of a valid file, which must give an
//! error or a file, never a panic.

use bitnet_gguf::{GgmlType, GgufError, GgufFile, GgufWriter, TensorDesc, Value, ValueType, codec};
use half::f16;

fn sample() -> Vec<u8> {
    let meta = vec![
        (
            "general.architecture".to_string(),
            Value::String("llama".into()),
        ),
        ("llama.block_count".to_string(), Value::U32(1)),
        (
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(
                ValueType::String,
                vec![Value::String("a".into()), Value::String("b".into())],
            ),
        ),
    ];
    let tensors = vec![
        TensorDesc {
            name: "w".into(),
            dims: vec![256, 2],
            ggml_type: GgmlType::Tq2_0,
        },
        TensorDesc {
            name: "n".into(),
            dims: vec![3],
            ggml_type: GgmlType::F32,
        },
    ];
    let mut w = GgufWriter::new(Vec::new(), &meta, tensors).unwrap();
    let values: Vec<i8> = (0..512).map(|i| (i % 3) as i8 - 1).collect();
    w.write_tensor("w", &codec::encode_tq2_0(&values, f16::from_f32(0.5)))
        .unwrap();
    w.write_tensor("n", &[0u8; 12]).unwrap();
    w.finish().unwrap()
}

#[test]
fn a_written_file_reads_back() {
    let f = GgufFile::from_bytes(sample()).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.get("llama.block_count"), Some(&Value::U32(1)));
    assert_eq!(
        f.get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .map(<[_]>::len),
        Some(2)
    );
    let w = f.tensor("w").unwrap();
    assert_eq!(
        (w.shape(), w.ggml_type, w.len),
        (vec![2, 256], GgmlType::Tq2_0, 132)
    );
    let (values, scales) = codec::decode_tq2_0(f.data(w), 512, "w").unwrap();
    assert_eq!(values[..4], [-1, 0, 1, -1]);
    assert_eq!(codec::tensor_scale(&values, &scales, "w").unwrap(), 0.5);
    assert_eq!(f.tensor("n").unwrap().offset % 32, 0);
}

fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

fn err(bytes: Vec<u8>) -> String {
    GgufFile::from_bytes(bytes).unwrap_err().to_string()
}

#[test]
fn an_unknown_version_is_refused() {
    let mut b = sample();
    b[4..8].copy_from_slice(&4u32.to_le_bytes());
    let e = GgufFile::from_bytes(b).unwrap_err();
    assert!(matches!(e, GgufError::Version { found: 4 }), "{e}");
    assert!(e.to_string().contains("`version`"), "{e}");
}

#[test]
fn a_type_not_read_is_named_with_the_types_read() {
    let mut b = sample();
    // Tensor "n" (F32, type 0) becomes Q4_K (12): the u32 after its one dimension.
    let at = find(
        &b,
        b"\x01\x00\x00\x00\x00\x00\x00\x00n\x01\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00",
    ) + 21;
    b[at..at + 4].copy_from_slice(&12u32.to_le_bytes());
    let e = err(b);
    for needle in ["tensor `n`", "Q4_K", "F32, F16, BF16, TQ1_0, TQ2_0, I2_S"] {
        assert!(e.contains(needle), "{e}");
    }
}

fn tensor_offset_at(b: &[u8], name: &[u8], n_dims: usize) -> usize {
    // name string (8 + len) + n_dims u32 + dims + type u32, then the offset.
    let start = find(b, &[&(name.len() as u64).to_le_bytes()[..], name].concat());
    start + 8 + name.len() + 4 + 8 * n_dims + 4
}

#[test]
fn offsets_past_the_end_and_overlaps_are_refused() {
    let mut b = sample();
    let at = tensor_offset_at(&b, b"n", 1);
    b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let e = err(b);
    assert!(
        e.contains("tensor `n` offset") && e.contains("past the end"),
        "{e}"
    );

    let mut b = sample();
    let at = tensor_offset_at(&b, b"n", 1);
    b[at..at + 8].copy_from_slice(&64u64.to_le_bytes()); // inside w's 132 bytes
    let e = err(b);
    assert!(
        e.contains("tensor `n` offset") && e.contains("overlap"),
        "{e}"
    );

    let mut b = sample();
    let at = tensor_offset_at(&b, b"n", 1);
    b[at..at + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes()); // offset + len overflows
    assert!(err(b).contains("past the end"));

    let mut b = sample();
    let at = tensor_offset_at(&b, b"n", 1);
    b[at..at + 8].copy_from_slice(&161u64.to_le_bytes());
    assert!(err(b).contains("not a multiple of the alignment"));
}

#[test]
fn string_and_array_lengths_past_the_file_are_refused_before_allocating() {
    let mut b = sample();
    let at = find(&b, &[&5u64.to_le_bytes()[..], b"llama"].concat());
    b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = err(b);
    assert!(
        e.contains("general.architecture") && e.contains("string length"),
        "{e}"
    );

    let mut b = sample();
    let at = find(&b, b"tokenizer.ggml.tokens") + 21 + 4 + 4; // key, array tag, element tag, count
    b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let e = err(b);
    assert!(
        e.contains("tokenizer.ggml.tokens") && e.contains("array length"),
        "{e}"
    );

    let mut b = sample();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err(b).contains("tensor_count"));
    let mut b = sample();
    b[16..24].copy_from_slice(&(1u64 << 62).to_le_bytes());
    assert!(err(b).contains("metadata_kv_count"));
}

#[test]
fn truncations_and_bad_magic_are_refused() {
    let b = sample();
    for len in [0, 3, 7, 20, 30, 100, b.len() - 1] {
        assert!(
            GgufFile::from_bytes(b[..len].to_vec()).is_err(),
            "length {len}"
        );
    }
    let mut b = sample();
    b[0] = b'X';
    assert!(matches!(
        GgufFile::from_bytes(b),
        Err(GgufError::Magic { .. })
    ));
}

#[test]
fn random_corruptions_never_panic() {
    let base = sample();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let mut b = base.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % b.len() as u64) as usize;
            b[at] = match next() % 3 {
                0 => next() as u8,
                1 => 0xFF,
                _ => 0,
            };
        }
        if next() % 8 == 0 {
            b.truncate((next() % b.len() as u64) as usize);
        }
        if let Ok(f) = GgufFile::from_bytes(b) {
            for t in f.tensors() {
                let _ = f.data(t);
            }
        }
    }
}
