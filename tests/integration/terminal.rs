//! `bitnet chat` in a real terminal (tmux): the streamed display, Ctrl-C stopping an answer while the
//! session goes on, and Ctrl-D leaving.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

/// Runs tmux with `args`; its stdout.
pub fn tmux(args: &[&str]) -> String {
    let o = Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux (installed by .ci/run)");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Polls `session`'s screen until `what` holds, failing with the screen after `secs` seconds.
pub fn wait_for(session: &str, what: impl Fn(&str) -> bool, secs: u64) -> String {
    let start = Instant::now();
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session, "-S", "-200"]);
        if what(&screen) {
            return screen;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out; the screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether the last non-empty line of `screen` is an empty prompt (the editor reads keys from then on).
fn prompt_is_last(screen: &str) -> bool {
    screen
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .is_some_and(|l| l.trim_end() == ">")
}

/// Starts `cmd` in a new detached tmux session `name` of `size` columns and rows (an old one of that
/// name is killed first).
pub fn start_session(name: &str, cmd: &str, size: (u16, u16)) {
    tmux(&["kill-session", "-t", name]);
    let (x, y) = (size.0.to_string(), size.1.to_string());
    let started = Command::new("tmux")
        .args(["new-session", "-d", "-s", name, "-x", &x, "-y", &y, cmd])
        .status()
        .expect("tmux (installed by .ci/run)");
    assert!(started.success(), "tmux new-session failed for {cmd}");
}

#[test]
fn ctrl_c_stops_an_answer_and_the_chat_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(&fixture("bitnet-llama3-tiny"), tmp.path(), &[]);
    let session = format!("bitnet-test-{}", std::process::id());
    // A scalar kernel on one thread, and as many tokens as the context holds, so there is time to interrupt.
    let cmd = format!(
        "'{}' chat '{}' --temperature 0 --max-tokens 100000 --kernel scalar --threads 1; echo EXITED-$?; sleep 30",
        env!("CARGO_BIN_EXE_bitnet"),
        file.display()
    );
    start_session(&session, &cmd, (160, 50));
    wait_for(&session, |s| s.lines().any(|l| l.starts_with(">")), 20);
    tmux(&[
        "send-keys",
        "-t",
        &session,
        "Tell me a very long story",
        "Enter",
    ]);
    // Wait until text streams in after the message, then interrupt.
    wait_for(
        &session,
        |s| {
            s.lines()
                .skip_while(|l| !l.contains("long story"))
                .nth(1)
                .is_some_and(|l| !l.trim().is_empty())
        },
        20,
    );
    tmux(&["send-keys", "-t", &session, "C-c"]);
    let screen = wait_for(
        &session,
        |s| s.contains("stop: cancelled") || s.contains("stop: context"),
        20,
    );
    assert!(
        screen.contains("stop: cancelled") && screen.contains("(stopped)"),
        "Ctrl-C should stop the answer:\n{screen}"
    );
    // The session goes on: another message gets an answer and a status line.
    wait_for(&session, prompt_is_last, 20);
    std::thread::sleep(Duration::from_millis(150));
    tmux(&["send-keys", "-t", &session, "Hello", "Enter"]);
    // It answers (text streams after the message), and Ctrl-C stops this answer too.
    wait_for(
        &session,
        |s| {
            s.lines()
                .skip_while(|l| l.trim_end() != "> Hello")
                .nth(1)
                .is_some_and(|l| !l.trim().is_empty())
        },
        30,
    );
    tmux(&["send-keys", "-t", &session, "C-c"]);
    let screen = wait_for(
        &session,
        |s| s.matches("stop: cancelled").count() + s.matches("stop: context").count() >= 2,
        30,
    );
    assert!(!screen.contains("EXITED"), "{screen}");
    wait_for(&session, prompt_is_last, 20);
    tmux(&["send-keys", "-t", &session, "C-d"]);
    let screen = wait_for(&session, |s| s.contains("EXITED-"), 20);
    assert!(
        screen.contains("EXITED-0"),
        "Ctrl-D leaves cleanly:\n{screen}"
    );
    tmux(&["kill-session", "-t", &session]);
}

#[test]
fn the_line_editor_has_arrow_keys_history_and_ctrl_c_at_the_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(&fixture("demo"), tmp.path(), &[]);
    let data = tmp.path().join("data");
    let session = format!("bitnet-edit-{}", std::process::id());
    let cmd = format!(
        "XDG_DATA_HOME='{}' '{}' chat '{}' --temperature 0 --max-tokens 8; echo EXITED-$?; sleep 30",
        data.display(),
        env!("CARGO_BIN_EXE_bitnet"),
        file.display()
    );
    start_session(&session, &cmd, (160, 50));
    // Waits for the `n`-th prompt, empty, on the last line (the editor reads keys from then on; keys typed
    // earlier are the terminal's to handle), as a person would before typing.
    let prompt = |n: usize| {
        wait_for(
            &session,
            |s| s.lines().filter(|l| l.starts_with('>')).count() >= n && prompt_is_last(s),
            30,
        );
        std::thread::sleep(Duration::from_millis(150));
    };
    prompt(1);
    // Arrow keys move the cursor: `/hlp`, two to the left, `e` makes `/help`.
    tmux(&["send-keys", "-t", &session, "/hlp"]);
    tmux(&["send-keys", "-t", &session, "Left", "Left"]);
    tmux(&["send-keys", "-t", &session, "e", "Enter"]);
    let screen = wait_for(&session, |s| s.contains("commands: /reset"), 20);
    assert!(!screen.contains("unknown command"), "{screen}");
    // Ctrl-C at the prompt clears the line and the chat goes on.
    prompt(2);
    tmux(&["send-keys", "-t", &session, "half a thought"]);
    wait_for(&session, |s| s.contains("> half a thought"), 20);
    tmux(&["send-keys", "-t", &session, "C-c"]);
    wait_for(&session, |s| s.contains("(Ctrl-D or /exit leaves)"), 20);
    prompt(3);
    tmux(&["send-keys", "-t", &session, "Hello", "Enter"]);
    wait_for(&session, |s| s.matches("tok/s").count() >= 1, 30);
    // Up recalls the last message; sent again, it gets a second answer.
    prompt(4);
    let before = tmux(&["capture-pane", "-p", "-t", &session]);
    tmux(&["send-keys", "-t", &session, "Up"]);
    wait_for(
        &session,
        |s| s.lines().filter(|l| l.trim_end() == "> Hello").count() >= 2,
        20,
    );
    tmux(&["send-keys", "-t", &session, "Enter"]);
    let screen = wait_for(&session, |s| s.matches("tok/s").count() >= 2, 30);
    assert!(
        !screen.contains("EXITED"),
        "before:\n{before}\nafter:\n{screen}"
    );
    prompt(5);
    tmux(&["send-keys", "-t", &session, "C-d"]);
    let screen = wait_for(&session, |s| s.contains("EXITED-"), 20);
    assert!(screen.contains("EXITED-0"), "{screen}");
    tmux(&["kill-session", "-t", &session]);
    // The history is kept in the user's data folder for the next chat; the cleared line is not in it.
    let history = std::fs::read_to_string(data.join("bitnet/chat_history")).unwrap();
    assert!(
        history.contains("/help") && history.contains("Hello"),
        "{history}"
    );
    assert!(!history.contains("half a thought"), "{history}");
}
