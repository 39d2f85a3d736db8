//! `bitnet doctor`: prints `bitnet_runtime::doctor`'s report, as text or JSON.

use indicatif::BinaryBytes;

use crate::Outcome;
use crate::cli::DoctorArgs;

pub fn run(args: DoctorArgs) -> anyhow::Result<Outcome> {
    let report = bitnet_runtime::doctor::report(&crate::version())?;
    let bandwidth = report.read_bandwidth_gb_s * 1e9;
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
