//! ggml tensor types: the ones this crate reads, their ids and byte sizes.

/// A ggml tensor type this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
    /// llama.cpp's base-3 ternary blocks: 256 weights in 54 bytes, one f16 scale.
    Tq1_0,
    /// llama.cpp's 2-bit ternary blocks: 256 weights in 66 bytes, one f16 scale.
    Tq2_0,
    /// bitnet.cpp's 2-bit codes in 128-weight blocks, one f32 scale after the codes, then padding to 32 bytes.
    I2S,
}

/// Every type this crate reads, in the order error messages list them.
pub const READ_TYPES: [GgmlType; 6] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Tq1_0,
    GgmlType::Tq2_0,
    GgmlType::I2S,
];

impl GgmlType {
    /// The type for a ggml type id, if this crate reads it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            30 => GgmlType::Bf16,
            34 => GgmlType::Tq1_0,
            35 => GgmlType::Tq2_0,
            36 => GgmlType::I2S,
            _ => return None,
        })
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Bf16 => 30,
            GgmlType::Tq1_0 => 34,
            GgmlType::Tq2_0 => 35,
            GgmlType::I2S => 36,
        }
    }

    /// The ggml name.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Bf16 => "BF16",
            GgmlType::Tq1_0 => "TQ1_0",
            GgmlType::Tq2_0 => "TQ2_0",
            GgmlType::I2S => "I2_S",
        }
    }

    /// Elements per block and bytes per block (I2_S has no fixed block size: see [`GgmlType::byte_len`]).
    pub fn block(self) -> (u64, u64) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Tq1_0 => (256, 54),
            GgmlType::Tq2_0 => (256, 66),
            GgmlType::I2S => (1, 1),
        }
    }

    /// Bytes of a tensor of ggml dimensions `dims` (`dims[0]` the innermost, the row length), or why no
    /// such tensor exists. Every product is checked.
    pub fn byte_len(self, dims: &[u64]) -> Result<u64, String> {
        let n = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("dimensions {dims:?} overflow"))?;
        if self == GgmlType::I2S {
            // bitnet.cpp's ggml_nbytes: the 2-bit codes, then one f32 scale padded to 32 bytes.
            return (n / 4)
                .checked_add(32)
                .ok_or_else(|| format!("dimensions {dims:?} overflow"));
        }
        let (blck, size) = self.block();
        let row = dims.first().copied().unwrap_or(1);
        if row % blck != 0 {
            return Err(format!(
                "{} rows of {row} elements are not a whole number of {blck}-element blocks",
                self.name()
            ));
        }
        (n / blck)
            .checked_mul(size)
            .ok_or_else(|| format!("dimensions {dims:?} overflow"))
    }
}

/// The ggml name of a type id this crate does not read (for error messages).
pub fn id_name(id: u32) -> String {
    let name = match id {
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        37 => "I8_S (bitnet.cpp)",
        38 => "TL1 (bitnet.cpp)",
        39 => "TL2 (bitnet.cpp) or MXFP4 (ggml)",
        _ => return format!("unknown type {id}"),
    };
    name.to_string()
}

/// The list of types this crate reads, for error messages.
pub fn read_types_list() -> String {
    READ_TYPES.map(GgmlType::name).join(", ")
}
