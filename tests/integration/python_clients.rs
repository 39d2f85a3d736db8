//! `bitnet serve` used by the Python clients people wire it into, beyond the official `openai` package
//! (openai_py.rs): litellm, langchain-openai and the `llm` CLI, each pinned in .ci/run's venv and driven by
//! its script in tests/python/ (the script's docstring lists what it checks).
//!
//! Every script runs with tests/python/netguard on PYTHONPATH, which refuses and records any DNS lookup or
//! connection beyond this machine, in the script and in the processes it starts: a client that phones home
//! (litellm's price list, a tokenizer download) fails the test even when it swallows the error.
//!
//! The Python is `$BITNET_PYTHON`, else `python3`. Without a client's package its test is skipped with a
//! note, unless `BITNET_CI=1`, where it fails.

use std::path::Path;
use std::process::Command;

use crate::http::Server;
use crate::util::{convert, fixture, repo_root};

const API_KEY: &str = "test-key-python-clients";

fn python() -> String {
    std::env::var("BITNET_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn on_ci() -> bool {
    std::env::var("BITNET_CI").is_ok_and(|v| v == "1")
}

/// Whether `python` can import every module of `modules`; the reason when it cannot.
fn importable(python: &str, modules: &[&str]) -> Result<(), String> {
    let probe = format!("import {}", modules.join(", "));
    // litellm fetches its price list from the network at import unless told not to.
    let out = Command::new(python)
        .args(["-c", &probe])
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        // The last line of the traceback: "ModuleNotFoundError: No module named 'litellm'".
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr)
            .lines()
            .last()
            .unwrap_or("no error output")
            .to_string()),
        Err(e) => Err(format!("cannot run {python}: {e}")),
    }
}

/// Whether the test can run: `Some(python)` when `python` has `modules`; `None` (after a note) when it has
/// not and this is not CI; a panic naming what to install when it has not on CI.
pub(crate) fn python_with(modules: &[&str], install: &str) -> Option<String> {
    let python = python();
    match importable(&python, modules) {
        Ok(()) => Some(python),
        Err(why) => {
            assert!(
                !on_ci(),
                "BITNET_CI=1 but {python} cannot import {} ({why}): pip install {install}, or point \
                 BITNET_PYTHON at a Python that has it",
                modules.join(", ")
            );
            eprintln!(
                "skipped: pip install {install} to run this test ({python}: {why}; BITNET_PYTHON picks \
                 the Python)"
            );
            None
        }
    }
}

/// Serves the LLaMA 3 fixture (random weights: tool calls and schemas are kept valid by the grammar),
/// runs `tests/python/SCRIPT BASE_URL API_KEY MODEL_ID` with the network guard, and requires it to pass
/// every check of `checks` (the names its "ok   NAME" lines start with) and to reach no other host.
fn run_client(python: &str, script: &str, checks: &[&str]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = convert(&fixture("bitnet-llama3-tiny"), dir.path(), &[]);
    let server = Server::start(&model, &["--api-key", API_KEY]);
    let model_id = server.get("/stats").json()["model"]
        .as_str()
        .expect("/stats names the model")
        .to_string();

    let scripts = repo_root().join("tests/python");
    let script = scripts.join(script);
    let netguard_log = dir.path().join("netguard.log");
    let out = Command::new(python)
        .arg(&script)
        .args([&format!("http://{}", server.addr), API_KEY, &model_id])
        .env("PYTHONPATH", scripts.join("netguard"))
        .env("BITNET_NETGUARD_LOG", &netguard_log)
        // No __pycache__ in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("run {python} {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "{} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server log\n{}",
        script.display(),
        out.status,
        server.log()
    );
    for check in checks {
        assert!(
            stdout.contains(&format!("ok   {check}")),
            "check {check:?} did not pass:\n{stdout}"
        );
    }
    assert_no_network(&netguard_log);
    eprintln!("{stdout}");
}

/// The guard's log is absent (nothing was refused) or empty.
fn assert_no_network(log: &Path) {
    let refused = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        refused.trim().is_empty(),
        "a client tried to reach another host (refused by tests/python/netguard):\n{refused}"
    );
}

#[test]
fn litellm_works() {
    let Some(python) = python_with(&["litellm", "jsonschema"], "litellm jsonschema") else {
        return;
    };
    run_client(
        &python,
        "litellm_client.py",
        &[
            "chat:",
            "chat stream:",
            "tool call:",
            "response_format:",
            "errors:",
        ],
    );
}

#[test]
fn langchain_openai_works() {
    let Some(python) = python_with(
        &["langchain_openai", "jsonschema"],
        "langchain-openai jsonschema",
    ) else {
        return;
    };
    run_client(
        &python,
        "langchain_client.py",
        &["invoke:", "stream:", "tools:", "with_structured_output:"],
    );
}

#[test]
fn llm_cli_works() {
    let Some(python) = python_with(&["llm", "jsonschema"], "llm jsonschema") else {
        return;
    };
    run_client(
        &python,
        "llm_cli.py",
        &["models:", "prompt:", "schema:", "completion:", "wrong key:"],
    );
}
