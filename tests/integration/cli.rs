//! The command line's own surface: `--version`, `completions`, `doctor`, `-q`, and the JSON each command
//! prints (one shape, a `schema_version`).

use serde_json::Value;

use crate::util::{bitnet, convert, fixture, ok, run, stderr};

#[test]
fn version_names_the_commit_the_profile_and_the_kernel_sets() {
    let v = ok(&["--version"]);
    assert!(
        v.starts_with(&format!("bitnet {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    for part in ["build; kernel sets", "scalar", "this CPU runs"] {
        assert!(v.contains(part), "{part}: {v}");
    }
}

#[test]
fn completions_are_scripts_for_each_shell() {
    let bash = ok(&["completions", "bash"]);
    assert!(
        bash.contains("_bitnet()") && bash.contains("perplexity"),
        "{bash}"
    );
    let zsh = ok(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef bitnet"), "{zsh}");
    let o = run(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("invalid value 'tcsh'"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn doctor_reports_the_machine_without_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let o = bitnet()
        .args(["doctor", "--json"])
        .env("HF_TOKEN", "hf_secret_value_123")
        .env("XDG_CACHE_HOME", tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        !text.contains("hf_secret_value_123"),
        "the token leaked:\n{text}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["hf_token_present"], true);
    assert!(v["cores"].as_u64().unwrap() >= 1);
    assert!(v["read_bandwidth_gb_s"].as_f64().unwrap() > 0.0);
    let sets = v["kernel_sets"].as_array().unwrap();
    assert!(
        sets.iter()
            .any(|k| k["name"] == "scalar" && k["runs_here"] == true)
    );
    assert!(sets.iter().any(|k| k["name"] == v["chosen_kernel"]), "{v}");
    assert_eq!(
        v["model_cache"]["path"],
        tmp.path().join("bitnet").to_str().unwrap()
    );
    let fam = v["families"].as_array().unwrap();
    assert!(fam.iter().any(|f| f["name"] == "2b4t"), "{v}");
}

#[test]
fn convert_json_reports_what_was_written_and_quiet_silences_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.bitnet");
    let o = bitnet()
        .args(["convert", fixture("demo").to_str().unwrap(), "-o"])
        .arg(&out)
        .args(["--json", "-q"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "", "-q prints nothing but errors");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["output"], out.to_str().unwrap());
    assert_eq!(v["file_bytes"], std::fs::metadata(&out).unwrap().len());
    assert!(v["parameters"].as_u64().unwrap() > v["ternary_parameters"].as_u64().unwrap());
    // The same model's `inspect --json` says the same count.
    let i: Value =
        serde_json::from_str(&ok(&["inspect", out.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(i["schema_version"], 1);
    assert_eq!(i["totals"]["parameters"], v["parameters"]);
    assert_eq!(i["check"], Value::Null);
}

#[test]
fn run_json_uses_the_names_serve_uses() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(&fixture("demo"), tmp.path(), &[]);
    let v: Value = serde_json::from_str(&ok(&[
        "run",
        file.to_str().unwrap(),
        "-p",
        "The economy",
        "--temperature",
        "0",
        "--max-tokens",
        "5",
        "--json",
    ]))
    .unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["completion_tokens"], 5);
    assert_eq!(v["ids"].as_array().unwrap().len(), 5);
    assert_eq!(v["stop_reason"], "length");
}
