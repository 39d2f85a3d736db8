//! What this machine offers a model, as `bitnet doctor` reports it: CPU features and kernel sets, cores,
//! memory and the streaming-read bandwidth that bounds decode speed, the cache folders, whether a Hub token
//! is set (never its value), and what each known family needs.

use std::path::{Path, PathBuf};

use bitnet_kernels::Kernels;
use bitnet_kernels::dispatch::NAMES;
use bitnet_kernels::pool::{Pool, read_bandwidth};
use serde::Serialize;

use crate::store::Store;
use crate::sys::{cores, meminfo};

#[derive(Serialize)]
#[allow(missing_docs)]
pub struct Folder {
    pub path: PathBuf,
    pub bytes: u64,
    pub files: u64,
}

#[derive(Serialize)]
#[allow(missing_docs)]
pub struct Family {
    pub name: &'static str,
    pub repo: &'static str,
    pub file_bytes: u64,
    pub bytes_per_token: u64,
    pub fits_in_memory: Option<bool>,
}

#[derive(Serialize)]
#[allow(missing_docs)]
pub struct Report {
    pub schema_version: u32,
    pub version: String,
    pub cpu_features: Vec<&'static str>,
    pub kernel_sets: Vec<KernelSet>,
    pub chosen_kernel: String,
    pub cores: usize,
    pub memory_total_bytes: Option<u64>,
    pub memory_available_bytes: Option<u64>,
    pub read_bandwidth_gb_s: f64,
    pub model_cache: Folder,
    pub hf_cache: Folder,
    pub hf_token_present: bool,
    pub families: Vec<Family>,
}

#[derive(Serialize)]
#[allow(missing_docs)]
pub struct KernelSet {
    pub name: &'static str,
    pub runs_here: bool,
}

/// Total size and count of the regular files under `dir` (symlinks not followed).
pub fn folder(dir: &Path) -> Folder {
    let (mut bytes, mut files) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => {
                    bytes += e.metadata().map_or(0, |m| m.len());
                    files += 1;
                }
                _ => {}
            }
        }
    }
    Folder {
        path: dir.to_path_buf(),
        bytes,
        files,
    }
}

/// About how large a converted file of `c` is (2-bit ternary weights, bf16 embedding, an int8 head copy)
/// and how many bytes a decoded token reads (the ternary weights and the int8 head).
pub fn sizes(c: &bitnet_model::ModelConfig) -> (u64, u64) {
    let (h, v) = (c.hidden_size as u64, c.vocab_size as u64);
    let per_layer = 2 * h * (c.num_heads * c.head_dim) as u64
        + 2 * h * (c.num_kv_heads * c.head_dim) as u64
        + 3 * h * c.intermediate_size as u64;
    let ternary = c.num_layers as u64 * per_layer / 4;
    let head = v * h;
    (ternary + 2 * v * h + head, ternary + head)
}

/// The SIMD features of this CPU that the kernels use.
pub fn cpu_features() -> Vec<&'static str> {
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => {
                $(if std::arch::is_x86_feature_detected!($name) { f.push($name); })*
            };
        }
        probe!(
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avxvnni"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => {
                $(if std::arch::is_aarch64_feature_detected!($name) { f.push($name); })*
            };
        }
        probe!("neon", "dotprod", "i8mm");
    }
    f
}

/// Gathers the report; `version` is the program's version line.
pub fn report(version: &str) -> anyhow::Result<Report> {
    let chosen = Kernels::from_env().map_err(|e| anyhow::anyhow!(e))?;
    let threads = cores();
    let bandwidth = read_bandwidth(&Pool::new(threads), &chosen, 256 << 20, 3);
    let available = meminfo("MemAvailable");
    let env = bitnet_hub::HubEnv::from_process();
    let families = bitnet_model::synthetic::NAMES
        .iter()
        .filter_map(|n| bitnet_model::synthetic::family(n).map(|f| (*n, f)))
        .map(|(name, f)| {
            let (file_bytes, bytes_per_token) = sizes(&f.config);
            Family {
                name,
                repo: f.repo,
                file_bytes,
                bytes_per_token,
                fits_in_memory: available.map(|a| file_bytes < a),
            }
        })
        .collect();
    Ok(Report {
        schema_version: 1,
        version: version.to_string(),
        cpu_features: cpu_features(),
        kernel_sets: NAMES
            .iter()
            .map(|&name| KernelSet {
                name,
                runs_here: Kernels::supported(name),
            })
            .collect(),
        chosen_kernel: chosen.name.to_string(),
        cores: threads,
        memory_total_bytes: meminfo("MemTotal"),
        memory_available_bytes: available,
        read_bandwidth_gb_s: bandwidth / 1e9,
        model_cache: folder(&Store::from_env().dir),
        hf_cache: folder(&env.cache_dir().unwrap_or_default()),
        hf_token_present: env.token.is_some(),
        families,
    })
}
