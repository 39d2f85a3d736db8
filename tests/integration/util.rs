//! Helpers: run the binary, find and copy fixtures, rewrite safetensors files, decode per SPEC.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::Value;

/// The fixtures every text test runs: the three 2B4T-layout ones and 1bitLLM's (LLaMA layout, latent
/// F32 weights, a SentencePiece tokenizer.model and no tokenizer.json).
pub const FIXTURES: [&str; 4] = [
    "bitnet-tiny-tied",
    "bitnet-tiny-untied-sharded",
    "bitnet-llama3-tiny",
    "bitnet-1bitllm-tiny",
];

/// The other checkpoint layouts (pre-packed 2B4T; Falcon3 and HF1BitLLM: LlamaForCausalLM + BitLinear).
pub const LAYOUT_FIXTURES: [&str; 3] = ["bitnet-2b4t-packed", "falcon3-tiny", "hf1bitllm-tiny"];

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("fixtures").join(name)
}

/// The binary, with its remembered checksum checks kept in the build's temporary folder rather than the
/// user's state folder (a test may set its own `XDG_STATE_HOME`).
pub fn bitnet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bitnet"));
    c.env(
        "XDG_STATE_HOME",
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("state"),
    );
    c
}

/// Runs `bitnet args...` and returns its output.
pub fn run(args: &[&str]) -> Output {
    bitnet().args(args).output().expect("spawn bitnet")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs a command that must succeed and returns stdout.
pub fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "bitnet {args:?} failed ({:?}):\n{}",
        o.status,
        stderr(&o)
    );
    stdout(&o)
}

/// Converts `input` into `dir/name.bitnet` and returns the path.
pub fn convert(input: &Path, dir: &Path, extra: &[&str]) -> PathBuf {
    let out = dir.join(format!(
        "{}.bitnet",
        input.file_name().unwrap().to_string_lossy()
    ));
    let mut args = vec![
        "convert",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--force",
    ];
    args.extend_from_slice(extra);
    ok(&args);
    out
}

pub fn inspect_json(file: &Path) -> Value {
    serde_json::from_str(&ok(&["inspect", "--json", file.to_str().unwrap()])).unwrap()
}

/// Copies a fixture folder (following symlinks) into `dest`.
pub fn copy_fixture(name: &str, dest: &Path) -> PathBuf {
    let to = dest.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    to
}

/// Every tensor of the checkpoint folder (single file or shards): name -> (dtype, shape, bytes).
pub type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

pub fn read_checkpoint(dir: &Path) -> Tensors {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            out.extend(read_safetensors(&p));
        }
    }
    out
}

pub fn read_safetensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

pub fn write_safetensors(path: &Path, tensors: &Tensors) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Decodes source bytes to f32.
pub fn floats(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        d => panic!("unexpected dtype {d:?}"),
    }
}

/// The absmean ternary quantization of transformers' WeightQuant, written out plainly in the test:
/// values and the value of a +1 weight.
pub fn quantize_ternary(w: &[f32]) -> (Vec<i8>, f32) {
    let mut sum = 0f64;
    for x in w {
        sum += x.abs() as f64;
    }
    let mean = (sum as f32) / (w.len() as f32);
    let s = 1.0f32 / if mean < 1e-5 { 1e-5 } else { mean };
    let q = w
        .iter()
        .map(|&x| (x * s).round_ties_even().clamp(-1.0, 1.0) as i8)
        .collect();
    (q, 1.0f32 / s)
}

/// Reads the `ternary_r16` weight at (row, col) from tensor bytes, straight from SPEC.md 4.4.
pub fn ternary_at(data: &[u8], cols: usize, row: usize, col: usize) -> i8 {
    let kp = cols.div_ceil(16) * 16;
    let (tile, r) = (row / 16, row % 16);
    let (g, within) = (col / 16, col % 16);
    let (q, t) = (within / 4, within % 4);
    let byte = data[tile * 4 * kp + 64 * g + 4 * r + t];
    ((byte >> (2 * q)) & 3) as i8 - 1
}

/// Reads the `int8_r16` weight at (row, col) and its row scale, straight from SPEC.md 4.5.
pub fn int8_at(data: &[u8], rows: usize, cols: usize, row: usize, col: usize) -> (i8, f32) {
    let (rp, kp) = (rows.div_ceil(16) * 16, cols.div_ceil(16) * 16);
    let b = data[(row / 16) * 16 * kp + 64 * (col / 4) + 4 * (row % 16) + col % 4];
    let s = &data[rp * kp + 4 * row..rp * kp + 4 * row + 4];
    (
        (b as i16 - 128) as i8,
        f32::from_le_bytes(s.try_into().unwrap()),
    )
}

/// The data bytes of a tensor of a .bitnet file, located through `inspect --json`.
pub fn tensor_bytes<'a>(file: &'a [u8], info: &Value, name: &str) -> (&'a [u8], Value) {
    let t = info["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tensor {name}"));
    let (off, len) = (
        t["offset"].as_u64().unwrap() as usize,
        t["bytes"].as_u64().unwrap() as usize,
    );
    (&file[off..off + len], t.clone())
}

/// No file in `dir` but those listed (no stray temporaries or partial outputs).
pub fn assert_only(dir: &Path, names: &[&str]) {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(found, want, "files in {}", dir.display());
}

/// Creates `dir` (and parents) and returns it.
pub fn mkdir(dir: PathBuf) -> PathBuf {
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
