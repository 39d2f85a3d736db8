//! Downloads from the Hub stand-in of `hub_standin.rs`: the cache they write is the one
//! `huggingface_hub` writes, a cut transfer resumes, and every failure names the repo or file, exits 2
//! and leaves nothing a later run would take for a complete model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::hub_standin::{Access, HubRepo, StandIn};
use crate::util::*;

pub const COMMIT: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";

/// Folders for one test: the hub cache, the converted-model store, and a home with no token in it.
pub struct Sandbox {
    pub tmp: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    pub fn hub(&self) -> PathBuf {
        self.tmp.path().join("hub")
    }

    pub fn store(&self) -> PathBuf {
        self.tmp.path().join("xdg").join("bitnet")
    }

    pub fn hf_home(&self) -> PathBuf {
        self.tmp.path().join("hf-home")
    }

    /// `bitnet` with this sandbox's environment, asking `endpoint`.
    pub fn cmd(&self, endpoint: &str) -> Command {
        let mut c = bitnet();
        c.env("HF_HUB_CACHE", self.hub())
            .env("XDG_CACHE_HOME", self.tmp.path().join("xdg"))
            .env("HOME", self.tmp.path().join("home"))
            .env("HF_HOME", self.hf_home())
            .env("HF_ENDPOINT", endpoint)
            .env("BITNET_DOWNLOAD_RETRIES", "3")
            .env_remove("HF_TOKEN")
            .env_remove("HF_TOKEN_PATH")
            .env_remove("HUGGING_FACE_HUB_TOKEN")
            .env_remove("HF_HUB_OFFLINE");
        c
    }

    pub fn run(&self, endpoint: &str, args: &[&str]) -> Output {
        self.cmd(endpoint).args(args).output().unwrap()
    }
}

/// `fixtures/bitnet-tiny-tied` as repo `id`, with files a conversion never reads beside it.
pub fn tiny_repo(id: &str) -> HubRepo {
    HubRepo::from_folder(
        id,
        COMMIT,
        &fixture("bitnet-tiny-tied"),
        &[
            ("pytorch_model.bin", b"pickled weights"),
            ("model.gguf", b"GGUF"),
            ("README.md", b"# tiny"),
            (".gitattributes", b"*.safetensors filter=lfs"),
        ],
    )
}

/// Every file and symlink under `root` (symlinks with their targets), sorted.
pub fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let meta = p.symlink_metadata().unwrap();
            if meta.file_type().is_symlink() {
                out.push(format!(
                    "{rel} -> {}",
                    std::fs::read_link(&p).unwrap().display()
                ));
            } else if meta.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out.sort();
    out
}

/// The cache `huggingface_hub` leaves after `snapshot_download(repo, allow_patterns=files)`.
fn python_layout(repo: &HubRepo, files: &[&str]) -> Vec<String> {
    let folder = format!("models--{}", repo.id.replace('/', "--"));
    let mut out = vec![format!("{folder}/refs/main")];
    for name in files {
        let etag = repo.file(name).etag();
        out.push(format!(".locks/{folder}/{etag}.lock"));
        out.push(format!("{folder}/blobs/{etag}"));
        out.push(format!(
            "{folder}/snapshots/{}/{name} -> ../../blobs/{etag}",
            repo.commit
        ));
    }
    out.sort();
    out
}

/// No snapshot, ref or converted model: nothing a later run could take for a complete model.
pub fn assert_nothing_complete(sb: &Sandbox, repo: &str) {
    let folder = sb
        .hub()
        .join(format!("models--{}", repo.replace('/', "--")));
    for sub in ["snapshots", "refs"] {
        let d = folder.join(sub);
        assert!(
            !d.exists() || std::fs::read_dir(&d).unwrap().next().is_none(),
            "{} is not empty: {:?}",
            d.display(),
            tree(&d)
        );
    }
    let store = tree(&sb.store());
    assert!(
        store
            .iter()
            .all(|f| !f.ends_with(".bitnet") && !f.contains(".tmp-")),
        "{store:?}"
    );
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

const RUN: [&str; 7] = [
    "-p",
    "The capital of France is",
    "--temperature",
    "0",
    "--max-tokens",
    "6",
    "--threads=1",
];

#[test]
fn run_downloads_through_a_cut_connection_then_runs_offline_from_the_python_layout() {
    let sb = Sandbox::new();
    let repo = tiny_repo("org/tiny");
    let size = repo.file("model.safetensors").bytes.len() as u64;
    let hub = StandIn::start(vec![tiny_repo("org/tiny")]);
    hub.cut("model.safetensors", size / 2, 1);
    let o = sb
        .cmd(&hub.url)
        .arg("run")
        .arg("org/tiny")
        .args(RUN)
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    // The cut transfer was resumed where it stopped, not started again.
    let gets = hub.gets_of(&repo, "model.safetensors");
    let ranges: Vec<Option<String>> = gets.iter().map(|l| l.range.clone()).collect();
    assert_eq!(
        ranges,
        [None, Some(format!("bytes={}-", size / 2))],
        "{gets:?}"
    );
    assert!(
        err.contains("downloaded org/tiny: model.safetensors") && err.contains("1 retry"),
        "{err}"
    );
    // Off a terminal: one line per file, nothing else about the transfer.
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("org/tiny:")).collect();
    assert_eq!(lines.len(), 5, "{err}");
    assert!(
        lines.iter().all(|l| l.starts_with("downloaded org/tiny: ")),
        "{err}"
    );
    // Only the files a conversion reads were asked for.
    for l in hub.log() {
        for skip in [
            "pytorch_model.bin",
            "model.gguf",
            "README.md",
            ".gitattributes",
        ] {
            assert!(!l.path.ends_with(skip), "{l:?}");
        }
        assert!(!(l.path.starts_with("/cdn/") && l.auth), "{l:?}");
    }
    let wanted = [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ];
    assert_eq!(tree(&sb.hub()), python_layout(&repo, &wanted));
    let snap = sb.hub().join("models--org--tiny/snapshots").join(COMMIT);
    for name in wanted {
        assert_eq!(
            std::fs::read(snap.join(name)).unwrap(),
            repo.file(name).bytes,
            "{name}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(sb.hub().join("models--org--tiny/refs/main")).unwrap(),
        COMMIT
    );

    // A complete snapshot is used without asking the Hub.
    let asked = hub.log().len();
    let again = sb
        .cmd(&hub.url)
        .arg("run")
        .arg("org/tiny")
        .args(RUN)
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(hub.log().len(), asked, "{:?}", &hub.log()[asked..]);

    // The Hub goes away; the cache is enough.
    drop(hub);
    let o2 = sb
        .cmd("http://127.0.0.1:9")
        .env("HF_HUB_OFFLINE", "1")
        .arg("run")
        .arg("org/tiny")
        .args(RUN)
        .output()
        .unwrap();
    assert!(o2.status.success(), "{}", stderr(&o2));
    assert!(
        stderr(&o2).contains("using the converted copy"),
        "{}",
        stderr(&o2)
    );
    assert_eq!(stdout(&o2), stdout(&o));
    // The same text as the fixture folder itself gives.
    let o3 = sb
        .cmd("http://127.0.0.1:9")
        .arg("run")
        .arg(fixture("bitnet-tiny-tied"))
        .args(RUN)
        .output()
        .unwrap();
    assert_eq!(stdout(&o3), stdout(&o), "{}", stderr(&o3));
}

#[test]
fn a_gated_repo_says_how_to_pass_a_token_and_downloads_with_one() {
    let sb = Sandbox::new();
    let mut repo = tiny_repo("org/gated");
    repo.access = Access::Gated("hf_good".into());
    let hub = StandIn::start(vec![repo]);
    let o = sb.run(&hub.url, &["pull", "org/gated"]);
    let e = stderr(&o);
    assert_eq!(code(&o), Some(2), "{e}");
    for needle in [
        "org/gated: config.json: access refused (HTTP 401",
        "Please log in",
        "accept its terms at",
        "HF_TOKEN",
        "huggingface-cli login",
    ] {
        assert!(e.contains(needle), "`{needle}` in:\n{e}");
    }
    assert_nothing_complete(&sb, "org/gated");

    let o = sb
        .cmd(&hub.url)
        .env("HF_TOKEN", "hf_wrong")
        .args(["pull", "org/gated"])
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(code(&o), Some(2), "{e}");
    assert!(
        e.contains("HTTP 403") && e.contains("the token from $HF_TOKEN has no access"),
        "{e}"
    );
    assert!(!e.contains("hf_wrong"), "the token is never printed: {e}");
    assert_nothing_complete(&sb, "org/gated");

    let authed = || {
        hub.log()
            .iter()
            .filter(|l| l.path.contains("/resolve/") && l.auth)
            .count()
    };
    // A token file named by HF_TOKEN_PATH (into a fresh cache) ...
    let sb2 = Sandbox::new();
    let token_file = sb2.tmp.path().join("my-token");
    std::fs::write(&token_file, "hf_good").unwrap();
    let o = sb2
        .cmd(&hub.url)
        .env("HF_TOKEN_PATH", &token_file)
        .args(["pull", "org/gated"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let first = authed();
    assert!(first > 0);
    // ... and the one `huggingface-cli login` writes.
    std::fs::create_dir_all(sb.hf_home()).unwrap();
    std::fs::write(sb.hf_home().join("token"), "hf_good\n").unwrap();
    let o = sb.run(&hub.url, &["pull", "org/gated"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("ready: "), "{}", stderr(&o));
    assert!(authed() > first);
    let log = hub.log();
    // The token goes to the Hub only, never to the CDN it redirects to.
    assert!(log.iter().any(|l| l.path.starts_with("/cdn/")));
    assert!(log.iter().all(|l| !(l.path.starts_with("/cdn/") && l.auth)));
}

#[test]
fn a_missing_repo_or_revision_is_named() {
    let sb = Sandbox::new();
    let hub = StandIn::start(vec![tiny_repo("org/tiny")]);
    let o = sb.run(&hub.url, &["run", "org/nope", "-p", "x"]);
    let e = stderr(&o);
    assert_eq!(code(&o), Some(2), "{e}");
    assert!(
        e.contains(&format!("org/nope: no such model repo on {}", hub.url))
            && e.contains("HTTP 401 for")
            && e.contains("if it is private or gated"),
        "{e}"
    );
    let o = sb.run(
        &hub.url,
        &["convert", "org/tiny@v9", "-o", "/nonexistent/x.bitnet"],
    );
    let e = stderr(&o);
    assert_eq!(code(&o), Some(2), "{e}");
    assert!(e.contains("org/tiny: no revision `v9`"), "{e}");
    assert_nothing_complete(&sb, "org/nope");
    assert_nothing_complete(&sb, "org/tiny");
}

#[test]
fn an_endpoint_that_is_down_is_named_at_once() {
    let sb = Sandbox::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let t = Instant::now();
    let o = sb.run(&url, &["run", "org/tiny", "-p", "x"]);
    let e = stderr(&o);
    assert_eq!(code(&o), Some(2), "{e}");
    assert!(
        e.contains(&format!(
            "cannot reach {url}/api/models/org/tiny/revision/main"
        )) && e.contains("HF_HUB_OFFLINE=1"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_nothing_complete(&sb, "org/tiny");
}

#[test]
fn a_transfer_that_keeps_failing_is_kept_and_the_next_run_resumes_it() {
    let sb = Sandbox::new();
    let repo = tiny_repo("org/tiny");
    let f = repo.file("model.safetensors");
    let at = f.bytes.len() as u64 / 3;
    let hub = StandIn::start(vec![tiny_repo("org/tiny")]);
    hub.cut("model.safetensors", at, usize::MAX);
    let o = sb
        .cmd(&hub.url)
        .env("BITNET_DOWNLOAD_RETRIES", "2")
        .args(["run", "org/tiny", "-p", "x"])
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(code(&o), Some(2), "{e}");
    let gets = hub.gets_of(&repo, "model.safetensors");
    assert!(
        e.contains("org/tiny: model.safetensors: the download failed 2 times in a row")
            && e.contains(&format!("{at} of {} bytes are kept", f.bytes.len())),
        "{e}\n{gets:?}"
    );
    let partial = sb
        .hub()
        .join("models--org--tiny/blobs")
        .join(format!("{}.incomplete", f.sha256));
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), at);
    assert!(
        !sb.hub()
            .join("models--org--tiny/blobs")
            .join(&f.sha256)
            .exists()
    );
    assert_nothing_complete(&sb, "org/tiny");

    hub.cut("model.safetensors", at, 0);
    let o = sb.run(&hub.url, &["pull", "org/tiny"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let last = hub.gets_of(&repo, "model.safetensors").pop().unwrap();
    assert_eq!(last.range, Some(format!("bytes={at}-")));
    assert!(!partial.exists());
    let snap = sb.hub().join("models--org--tiny/snapshots").join(COMMIT);
    assert_eq!(
        std::fs::read(snap.join("model.safetensors")).unwrap(),
        f.bytes
    );
}

#[test]
fn a_stalled_transfer_times_out_and_resumes() {
    let sb = Sandbox::new();
    let repo = tiny_repo("org/tiny");
    let at = repo.file("model.safetensors").bytes.len() as u64 / 4;
    let hub = StandIn::start(vec![tiny_repo("org/tiny")]);
    hub.stall("model.safetensors", at, 1);
    let t = Instant::now();
    let o = sb
        .cmd(&hub.url)
        .env("HF_HUB_DOWNLOAD_TIMEOUT", "1")
        .args(["pull", "org/tiny"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    let ranges: Vec<Option<String>> = hub
        .gets_of(&repo, "model.safetensors")
        .into_iter()
        .map(|l| l.range)
        .collect();
    assert_eq!(ranges, [None, Some(format!("bytes={at}-"))]);
}

#[test]
fn bytes_that_do_not_match_the_listed_sha256_are_deleted() {
    let sb = Sandbox::new();
    let repo = tiny_repo("org/tiny");
    let hub = StandIn::start(vec![tiny_repo("org/tiny")]);
    hub.corrupt("model.safetensors");
    let o = sb.run(&hub.url, &["pull", "org/tiny"]);
    let e = stderr(&o);
    assert_eq!(code(&o), Some(2), "{e}");
    let sha = &repo.file("model.safetensors").sha256;
    assert!(
        e.contains("org/tiny: model.safetensors: its sha256 is")
            && e.contains(&format!("the Hub lists {sha}"))
            && e.contains("deleted"),
        "{e}"
    );
    let blobs = tree(&sb.hub().join("models--org--tiny/blobs"));
    assert!(blobs.iter().all(|b| !b.contains(sha.as_str())), "{blobs:?}");
    assert_nothing_complete(&sb, "org/tiny");
}

#[test]
fn a_full_disk_removes_the_partial_file() {
    let sb = Sandbox::new();
    let repo = tiny_repo("org/tiny");
    let sha = repo.file("model.safetensors").sha256.clone();
    let hub = StandIn::start(vec![repo]);
    // The partial blob is /dev/full, which refuses every write with ENOSPC.
    let blobs = mkdir(sb.hub().join("models--org--tiny/blobs"));
    let partial = blobs.join(format!("{sha}.incomplete"));
    std::os::unix::fs::symlink("/dev/full", &partial).unwrap();
    let o = sb.run(&hub.url, &["run", "org/tiny", "-p", "x"]);
    let e = stderr(&o);
    assert_eq!(code(&o), Some(2), "{e}");
    assert!(
        e.contains("org/tiny: model.safetensors: writing")
            && e.contains("No space left on device")
            && e.contains("the partial download was removed"),
        "{e}"
    );
    assert!(
        partial.symlink_metadata().is_err(),
        "the partial file is gone"
    );
    assert_nothing_complete(&sb, "org/tiny");
}

#[test]
fn a_repo_without_safetensors_weights_is_refused_before_any_download() {
    let sb = Sandbox::new();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("bitnet-tiny-tied").join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let repo = HubRepo::from_folder(
        "org/pickled",
        COMMIT,
        tmp.path(),
        &[("pytorch_model.bin", b"weights")],
    );
    let hub = StandIn::start(vec![repo]);
    let o = sb.run(&hub.url, &["pull", "org/pickled"]);
    let e = stderr(&o);
    assert_eq!(code(&o), Some(2), "{e}");
    assert!(
        e.contains(&format!(
            "org/pickled@{COMMIT}: the repo has no *.safetensors weights"
        )) && e.contains("pytorch_model.bin"),
        "{e}"
    );
    assert!(hub.log().iter().all(|l| !l.path.contains("/resolve/")));
    assert_nothing_complete(&sb, "org/pickled");
}

#[test]
fn offline_with_an_empty_cache_says_so() {
    let sb = Sandbox::new();
    let o = sb
        .cmd("http://127.0.0.1:9")
        .env("HF_HUB_OFFLINE", "1")
        .args(["run", "org/tiny", "-p", "x"])
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(code(&o), Some(2), "{e}");
    assert!(
        e.contains("org/tiny@main: not in the local Hugging Face cache")
            && e.contains("HF_HUB_OFFLINE is set, so nothing is downloaded"),
        "{e}"
    );
}

/// Not a check: the figures of a 1 GiB download over loopback (`cargo test --test integration -- --ignored
/// measure_download --nocapture`), whole and through a cut at half.
#[test]
#[ignore]
fn measure_download() {
    let mut seed = 1u64;
    let big: Vec<u8> = (0..1usize << 30)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 56) as u8
        })
        .collect();
    let config = std::fs::read(fixture("bitnet-tiny-tied").join("config.json")).unwrap();
    let files: &[(&str, &[u8])] = &[("config.json", &config), ("model.safetensors", &big)];
    let empty = tempfile::tempdir().unwrap();
    let repo = || HubRepo::from_folder("org/big", COMMIT, empty.path(), files);
    let hub = StandIn::start(vec![repo()]);
    for cut in [false, true] {
        let sb = Sandbox::new();
        if cut {
            hub.cut("model.safetensors", big.len() as u64 / 2, 1);
        }
        let t = Instant::now();
        let o = sb.run(&hub.url, &["pull", "org/big"]);
        let line = stderr(&o)
            .lines()
            .find(|l| l.contains("model.safetensors ("))
            .map(String::from);
        eprintln!(
            "cut {cut}: {line:?}, whole command {:.2} s",
            t.elapsed().as_secs_f64()
        );
    }
}
