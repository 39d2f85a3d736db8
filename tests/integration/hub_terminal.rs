//! A download in a real terminal (tmux): a progress bar per file, replaced by the file's line.

use std::path::PathBuf;

use crate::hub_download::{Sandbox, tiny_repo};
use crate::hub_standin::StandIn;
use crate::terminal::{start_session, tmux, wait_for};

#[test]
fn a_terminal_shows_a_progress_bar_per_file() {
    let sb = Sandbox::new();
    let repo = tiny_repo("org/tiny");
    let at = repo.file("model.safetensors").bytes.len() as u64 / 2;
    let hub = StandIn::start(vec![repo]);
    // The transfer stalls half way for a few seconds, so the bar can be seen.
    hub.stall("model.safetensors", at, 1);
    let session = format!("bitnet-hub-{}", std::process::id());
    let q = |p: PathBuf| format!("'{}'", p.display());
    let cmd = format!(
        "env -u HF_TOKEN -u HF_TOKEN_PATH -u HF_HUB_OFFLINE HF_HUB_CACHE={} XDG_CACHE_HOME={} \
         HOME={} HF_HOME={} HF_ENDPOINT={} HF_HUB_DOWNLOAD_TIMEOUT=3 '{}' pull org/tiny; \
         echo EXITED-$?; sleep 30",
        q(sb.hub()),
        q(sb.tmp.path().join("xdg")),
        q(sb.tmp.path().join("home")),
        q(sb.hf_home()),
        hub.url,
        env!("CARGO_BIN_EXE_bitnet"),
    );
    start_session(&session, &cmd, (150, 40));
    // The first frame can show the bar at 0 B, before any byte arrived: wait for the stall's frame.
    let shows_progress = |s: &str| {
        s.lines()
            .any(|l| l.contains("model.safetensors [") && l.contains("KiB/"))
    };
    let during = wait_for(&session, shows_progress, 20);
    let done = wait_for(&session, |s| s.contains("EXITED-"), 40);
    tmux(&["kill-session", "-t", &session]);
    let bar = during
        .lines()
        .find(|l| l.contains("model.safetensors [") && l.contains("KiB/"))
        .unwrap_or_else(|| panic!("no bar with bytes received:\n{during}"));
    assert!(bar.contains("eta"), "{during}");
    assert!(done.contains("EXITED-0"), "{done}");
    assert!(done.contains("org/tiny at c0ffee00c0ff: 5 files"), "{done}");
    assert!(
        done.contains("downloaded org/tiny: model.safetensors") && done.contains("1 retry"),
        "{done}"
    );
    // The bar is replaced by the file's line, not left behind.
    assert!(!done.lines().any(|l| l.contains(" eta ")), "{done}");
}
