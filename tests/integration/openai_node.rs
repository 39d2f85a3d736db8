//! `bitnet serve` used by the official `openai` Node SDK (version pinned in tests/node/package.json,
//! installed by `npm ci --prefix tests/node`): tests/node/client.mjs lists models, chats (whole and
//! streamed, greedy: the same text), asks for logprobs, completes text, embeds (the SDK's base64), and
//! gets a 400 and a 401 as the SDK's error classes, and runs a tool with `runTools`.
//!
//! Without node or the installed SDK the test is skipped with a note, unless `BITNET_CI=1`, where it fails.

use std::process::Command;

use crate::http::Server;
use crate::util::{convert, fixture, inspect_json, repo_root};

const API_KEY: &str = "test-key-openai-node";

#[test]
fn official_openai_node_sdk_works() {
    let sdk = repo_root().join("tests/node/node_modules/openai/package.json");
    let node = Command::new("node").arg("--version").output();
    if !sdk.is_file() || !node.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var("BITNET_CI").as_deref() != Ok("1"),
            "BITNET_CI=1 but node or the openai SDK is missing: run `npm ci --prefix tests/node`"
        );
        eprintln!(
            "skipped: install node and run `npm ci --prefix tests/node` to test the openai Node SDK"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let model = convert(&fixture("bitnet-llama3-tiny"), dir.path(), &[]);
    let hidden = inspect_json(&model)["config"]["hidden_size"].to_string();
    let server = Server::start(&model, &["--api-key", API_KEY]);
    let model_id = server.get("/stats").json()["model"]
        .as_str()
        .expect("/stats names the model")
        .to_string();
    let out = Command::new("node")
        .arg(repo_root().join("tests/node/client.mjs"))
        .args([
            &format!("http://{}", server.addr),
            API_KEY,
            &model_id,
            &hidden,
        ])
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Node client failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        server.log()
    );
    for check in [
        "ok models",
        "ok chat:",
        "ok chat stream",
        "ok logprobs",
        "ok completion",
        "ok embeddings",
        "ok errors",
        "ok runTools",
    ] {
        assert!(stdout.contains(check), "{check} missing:\n{stdout}");
    }
    eprintln!("{stdout}");
}
