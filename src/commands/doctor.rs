//! `bitnet doctor`: what this machine offers a model (CPU features and the kernel set chosen, threads,
//! memory and its bandwidth, cache folders and their sizes, whether a Hub token is set) and what a model
//! of each known family needs.

use std::path::{Path, PathBuf};

use bitnet_kernels::Kernels;
use bitnet_kernels::dispatch::NAMES;
use bitnet_kernels::pool::{Pool, read_bandwidth};
use bitnet_runtime::store::Store;
use bitnet_runtime::sys::cores;
use serde::Serialize;

use crate::Outcome;
use crate::cli::DoctorArgs;
use indicatif::BinaryBytes;

#[derive(Serialize)]
struct Folder {
    path: PathBuf,
    bytes: u64,
    files: u64,
}

#[derive(Serialize)]
struct Family {
    name: &'static str,
    repo: &'static str,
    file_bytes: u64,
    bytes_per_token: u64,
    fits_in_memory: Option<bool>,
}

#[derive(Serialize)]
struct Report {
    schema_version: u32,
    version: String,
    cpu_features: Vec<&'static str>,
    kernel_sets: Vec<KernelSet>,
    chosen_kernel: String,
    cores: usize,
    memory_total_bytes: Option<u64>,
    memory_available_bytes: Option<u64>,
    read_bandwidth_gb_s: f64,
    model_cache: Folder,
    hf_cache: Folder,
    hf_token_present: bool,
    families: Vec<Family>,
}

#[derive(Serialize)]
struct KernelSet {
    name: &'static str,
    runs_here: bool,
}

/// `MemTotal` / `MemAvailable` of /proc/meminfo, in bytes.
fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Total size and count of the regular files under `dir` (symlinks not followed).
fn folder(dir: &Path) -> Folder {
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
fn sizes(c: &bitnet_model::ModelConfig) -> (u64, u64) {
    let (h, v) = (c.hidden_size as u64, c.vocab_size as u64);
    let per_layer = 2 * h * (c.num_heads * c.head_dim) as u64
        + 2 * h * (c.num_kv_heads * c.head_dim) as u64
        + 3 * h * c.intermediate_size as u64;
    let ternary = c.num_layers as u64 * per_layer / 4;
    let head = v * h;
    (ternary + 2 * v * h + head, ternary + head)
}

fn cpu_features() -> Vec<&'static str> {
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

pub fn run(args: DoctorArgs) -> anyhow::Result<Outcome> {
    let chosen = Kernels::from_env().map_err(|e| anyhow::anyhow!(e))?;
    let threads = cores();
    let bandwidth = read_bandwidth(&Pool::new(threads), 256 << 20, 3);
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
    let report = Report {
        schema_version: 1,
        version: crate::version(),
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
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(Outcome::Success);
    }
    let sets: Vec<String> = report
        .kernel_sets
        .iter()
        .map(|k| format!("{}{}", k.name, if k.runs_here { "" } else { " (not here)" }))
        .collect();
    println!("bitnet {}", report.version);
    println!("cpu features    {}", report.cpu_features.join(" "));
    println!("kernel sets     {}", sets.join(", "));
    println!(
        "chosen kernel   {} (BITNET_KERNEL or --kernel override)",
        report.chosen_kernel
    );
    println!("cores           {}", report.cores);
    let mem = |b: Option<u64>| b.map_or("unknown".to_string(), |b| BinaryBytes(b).to_string());
    println!(
        "memory          {} total, {} available",
        mem(report.memory_total_bytes),
        mem(report.memory_available_bytes)
    );
    println!(
        "read bandwidth  {:.1} GB/s ({} threads; decode speed is bounded by it)",
        report.read_bandwidth_gb_s, report.cores
    );
    for (label, f) in [
        ("model cache", &report.model_cache),
        ("hf cache", &report.hf_cache),
    ] {
        println!(
            "{label:<15} {} ({}, {} files)",
            f.path.display(),
            BinaryBytes(f.bytes),
            f.files
        );
    }
    println!(
        "hf token        {}",
        if report.hf_token_present {
            "set (not shown)"
        } else {
            "not set (public repos only)"
        }
    );
    println!(
        "what each family needs (about: file size; bytes read per decoded token -> tok/s at this bandwidth):"
    );
    for f in &report.families {
        println!(
            "  {:<16} {:>10}  {:>10}/token  ~{:.0} tok/s{}",
            f.name,
            BinaryBytes(f.file_bytes).to_string(),
            BinaryBytes(f.bytes_per_token).to_string(),
            bandwidth / f.bytes_per_token as f64,
            if f.fits_in_memory == Some(false) {
                "  (more than the memory available)"
            } else {
                ""
            }
        );
    }
    Ok(Outcome::Success)
}
