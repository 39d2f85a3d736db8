//! SIGKILL at random points of `convert`, of the conversion `run FOLDER` makes into the store, and of a
//! download: whatever is left, a later run never takes a partial file for a complete one, and it
//! finishes the job and leaves no temporary file behind. The points are drawn from a seed printed in
//! every failure (set `BITNET_KILL_SEED` to replay one).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::hub_download::{Sandbox, tiny_repo, tree};
use crate::hub_standin::StandIn;
use crate::util::*;

/// A small seeded generator (splitmix64) for the kill times.
struct Points(u64);

impl Points {
    fn new() -> Points {
        let seed = std::env::var("BITNET_KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("BITNET_KILL_SEED={seed}");
        Points(seed)
    }

    /// A time in `[0, 1.2 * span)`: some kills land after the process ended on its own.
    fn within(&mut self, span: Duration) -> Duration {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        span.mul_f64(1.2 * (z >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// Starts `cmd`, SIGKILLs it after `after` (if it is still running), and says whether it was killed.
fn kill_after(mut cmd: Command, after: Duration) -> bool {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while t.elapsed() < after {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!("killed after {after:?}");
    true
}

/// How long `cmd` takes to the end.
fn duration_of(mut cmd: Command) -> Duration {
    let t = Instant::now();
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    t.elapsed()
}

/// Every `.bitnet` file under `dir` passes `inspect --check`: nothing partial under a final name.
fn every_model_is_complete(dir: &Path, what: &str) {
    for f in tree(dir) {
        if f.ends_with(".bitnet") && !f.contains(" -> ") {
            let path = dir.join(&f);
            let o = run(&["inspect", "--check", path.to_str().unwrap()]);
            assert!(o.status.success(), "{what}: {f} is partial: {}", stderr(&o));
        }
    }
}

fn no_temporaries(dir: &Path, what: &str) {
    let left: Vec<String> = tree(dir)
        .into_iter()
        .filter(|f| f.contains(".tmp-") || f.ends_with(".incomplete"))
        .collect();
    assert!(left.is_empty(), "{what}: {left:?}");
}

#[test]
fn sigkill_during_convert_never_leaves_a_partial_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo.bitnet");
    let convert = || {
        let mut c = bitnet();
        c.args(["convert", "-f", "-o", out.to_str().unwrap()])
            .arg(repo_root().join("fixtures/demo"));
        c
    };
    let span = duration_of(convert());
    std::fs::remove_file(&out).unwrap();
    let mut points = Points::new();
    let mut killed = 0;
    for round in 0..6 {
        let at = points.within(span);
        let what = format!("round {round}, killed after {at:?} of {span:?}");
        killed += usize::from(kill_after(convert(), at));
        every_model_is_complete(tmp.path(), &what);
        // The next run finishes the job and removes what the killed one left.
        let o = convert().output().unwrap();
        assert!(o.status.success(), "{what}: {}", stderr(&o));
        every_model_is_complete(tmp.path(), &what);
        no_temporaries(tmp.path(), &what);
        std::fs::remove_file(&out).unwrap();
    }
    assert!(killed > 0, "no run was killed before it ended");
}

#[test]
fn sigkill_during_the_store_conversion_of_run_never_leaves_a_partial_model() {
    let sb = Sandbox::new();
    let folder = copy_fixture("demo", sb.tmp.path());
    let run_it = || {
        let mut c = sb.cmd("http://127.0.0.1:9");
        c.args([
            "run",
            folder.to_str().unwrap(),
            "-p",
            "The",
            "--max-tokens",
            "1",
        ]);
        c
    };
    let span = duration_of(run_it());
    let o = sb.run("http://127.0.0.1:9", &["rm", "--all"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut points = Points::new();
    for round in 0..5 {
        let at = points.within(span);
        let what = format!("round {round}, killed after {at:?} of {span:?}");
        kill_after(run_it(), at);
        every_model_is_complete(&sb.store(), &what);
        let o = run_it().output().unwrap();
        assert!(o.status.success(), "{what}: {}", stderr(&o));
        every_model_is_complete(&sb.store(), &what);
        no_temporaries(&sb.store(), &what);
        let o = sb.run("http://127.0.0.1:9", &["rm", "--all"]);
        assert!(o.status.success(), "{what}: {}", stderr(&o));
    }
}

#[test]
fn sigkill_during_a_download_never_leaves_a_partial_file_under_its_name() {
    let repo = tiny_repo("org/tiny");
    let hub = StandIn::start(vec![tiny_repo("org/tiny")]);
    let size = repo.file("model.safetensors").bytes.len() as u64;
    let mut points = Points::new();
    let mut span = Duration::ZERO;
    for round in 0..5 {
        let sb = Sandbox::new();
        let pull = || {
            let mut c = sb.cmd(&hub.url);
            c.args(["pull", "org/tiny"]);
            c
        };
        // Half the rounds hang the weights' transfer halfway, so a kill lands inside it.
        if round % 2 == 1 {
            hub.stall("model.safetensors", size / 2, 1);
        }
        if round == 0 {
            span = duration_of(pull());
            continue;
        }
        let at = points.within(span);
        let what = format!("round {round}, killed after {at:?}");
        kill_after(pull(), at);
        // Every file the snapshot names holds the repo's bytes; every model in the store is complete.
        let snapshots = sb.hub().join("models--org--tiny").join("snapshots");
        for f in tree(&snapshots) {
            let name = f.split(" -> ").next().unwrap();
            let path = snapshots.join(name);
            let file = name.rsplit('/').next().unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                bytes == repo.file(file).bytes,
                "{what}: {name} does not hold the repo's bytes"
            );
        }
        every_model_is_complete(&sb.store(), &what);
        hub.stall("model.safetensors", 0, 0);
        let o = pull().output().unwrap();
        assert!(o.status.success(), "{what}: {}", stderr(&o));
        no_temporaries(&sb.store(), &what);
        no_temporaries(&sb.hub(), &what);
        every_model_is_complete(&sb.store(), &what);
    }
}
