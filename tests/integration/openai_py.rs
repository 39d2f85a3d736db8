//! `bitnet serve` used by a real outside client: the official `openai` Python package runs
//! `tests/openai_client.py` against the server (models, chat and text completions streamed and not,
//! `stop`, a 400 and a 401 as the package's exception types, the FP32 reference backend, tool calls with
//! `tool_choice: "required"` whole and through the client's stream helper, a tool-result turn with the
//! assistant message passed back as the client returned it, and `chat.completions.parse` with a Pydantic
//! `response_format` and a Pydantic tool).
//!
//! The Python is `$BITNET_PYTHON`, else `python3`. Without the `openai` package the test is skipped
//! with a note, unless `BITNET_CI=1`, where it fails.

use std::process::Command;

use crate::http::Server;
use crate::python_clients::python_with;
use crate::util::{convert, fixture, repo_root};

const API_KEY: &str = "test-key-openai-py";

#[test]
fn official_openai_python_client_works() {
    let Some(python) = python_with(&["openai"], "openai") else {
        return;
    };

    let dir = tempfile::tempdir().expect("temp dir");
    let model = convert(&fixture("bitnet-llama3-tiny"), dir.path(), &[]);
    let reference = fixture("bitnet-llama3-tiny");
    let reference = reference.to_str().expect("UTF-8 fixture path");
    let server = Server::start(&model, &["--api-key", API_KEY, "--reference", reference]);

    // /stats is open without the key and names both backends.
    let stats = server.get("/stats").json();
    let ids: Vec<&str> = stats["backends"]
        .as_array()
        .unwrap_or_else(|| panic!("/stats has no backends: {stats}"))
        .iter()
        .filter_map(|b| b["id"].as_str())
        .collect();
    let [model_id, reference_id] = ids[..] else {
        panic!("expected the packed and the FP32 backend in /stats: {stats}");
    };
    assert_eq!(reference_id, format!("{model_id}:fp32"), "{stats}");

    let script = repo_root().join("tests/openai_client.py");
    let base_url = format!("http://{}", server.addr);
    let out = Command::new(&python)
        .arg(&script)
        .args([&base_url, API_KEY, model_id, reference_id])
        .output()
        .unwrap_or_else(|e| panic!("run {python} {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server log\n{}",
        script.display(),
        out.status,
        server.log()
    );
    assert!(
        stdout.contains("all checks passed"),
        "the script exited 0 without finishing:\n{stdout}\n{stderr}"
    );
    // Every request reached the server: it counted completion tokens for them.
    let after = server.get("/stats").json();
    assert!(
        after["completion_tokens_total"].as_u64().unwrap_or(0) >= 12 * 2 + 10 * 2,
        "{after}"
    );
}
