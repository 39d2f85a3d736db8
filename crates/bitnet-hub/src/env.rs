//! The environment variables `huggingface_hub` reads, read the way it reads them, so both tools agree
//! on where the cache is, which Hub to ask and which token to send.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The Hub asked when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where a token came from (so an error can say which one the Hub refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// An environment variable (`HF_TOKEN`, or the older `HUGGING_FACE_HUB_TOKEN`).
    Env(&'static str),
    /// A token file (`HF_TOKEN_PATH`, or `$HF_HOME/token` as `huggingface-cli login` writes it).
    File(PathBuf),
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Env(var) => write!(f, "${var}"),
            TokenSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// An access token. Its value never appears in `Debug` output or in an error.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    value: String,
    /// Where it was read from.
    pub source: TokenSource,
}

impl Token {
    /// A token read from `source`.
    pub fn new(value: impl Into<String>, source: TokenSource) -> Token {
        Token {
            value: value.into(),
            source,
        }
    }

    /// The secret itself, for the `Authorization` header.
    pub fn secret(&self) -> &str {
        &self.value
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(<redacted> from {})", self.source)
    }
}

/// The environment the resolver and the downloader read (explicit, so tests need not mutate the process
/// environment).
#[derive(Debug, Clone, Default)]
pub struct HubEnv {
    /// `HF_HUB_CACHE` (or the older `HUGGINGFACE_HUB_CACHE`).
    pub hf_hub_cache: Option<PathBuf>,
    /// `HF_HOME`.
    pub hf_home: Option<PathBuf>,
    /// `XDG_CACHE_HOME`.
    pub xdg_cache_home: Option<PathBuf>,
    /// `HOME`.
    pub home: Option<PathBuf>,
    /// `HF_HUB_OFFLINE` set to a true value: only the local cache is used.
    pub offline: bool,
    /// `HF_ENDPOINT`: the Hub or a mirror of it (default [`DEFAULT_ENDPOINT`]).
    pub endpoint: Option<String>,
    /// The token sent to the endpoint: `HF_TOKEN`, else the file `HF_TOKEN_PATH`, else `$HF_HOME/token`.
    pub token: Option<Token>,
    /// `HF_HUB_DOWNLOAD_TIMEOUT` (seconds): the longest wait for a connection or for the next bytes of
    /// a response (default 10 s, as in `huggingface_hub`).
    pub download_timeout: Option<Duration>,
    /// `BITNET_DOWNLOAD_RETRIES`: attempts per file after which a transfer that makes no progress fails
    /// (default 5).
    pub retries: Option<u32>,
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

impl HubEnv {
    /// Reads the variables (and the token file they point to) from the process environment.
    pub fn from_process() -> HubEnv {
        let path = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let string = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let mut env = HubEnv {
            hf_hub_cache: path("HF_HUB_CACHE").or_else(|| path("HUGGINGFACE_HUB_CACHE")),
            hf_home: path("HF_HOME"),
            xdg_cache_home: path("XDG_CACHE_HOME"),
            home: path("HOME"),
            offline: string("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v)),
            endpoint: string("HF_ENDPOINT"),
            token: None,
            download_timeout: string("HF_HUB_DOWNLOAD_TIMEOUT")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64),
            retries: string("BITNET_DOWNLOAD_RETRIES").and_then(|v| v.trim().parse().ok()),
        };
        env.token = if let Some(t) = string("HF_TOKEN") {
            Some(Token::new(t.trim(), TokenSource::Env("HF_TOKEN")))
        } else if let Some(t) = string("HUGGING_FACE_HUB_TOKEN") {
            Some(Token::new(
                t.trim(),
                TokenSource::Env("HUGGING_FACE_HUB_TOKEN"),
            ))
        } else {
            env.token_file(path("HF_TOKEN_PATH").as_deref())
                .and_then(|f| read_token_file(&f))
        };
        env
    }

    /// `huggingface_hub`'s home folder: `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else
    /// `~/.cache/huggingface`.
    pub fn hf_home_dir(&self) -> Option<PathBuf> {
        if let Some(h) = &self.hf_home {
            return Some(h.clone());
        }
        if let Some(x) = &self.xdg_cache_home {
            return Some(x.join("huggingface"));
        }
        self.home
            .as_ref()
            .map(|h| h.join(".cache").join("huggingface"))
    }

    /// The token file: `token_path` (`HF_TOKEN_PATH`) when given, else `<hf home>/token`.
    pub fn token_file(&self, token_path: Option<&Path>) -> Option<PathBuf> {
        token_path
            .map(Path::to_path_buf)
            .or_else(|| self.hf_home_dir().map(|h| h.join("token")))
    }

    /// The hub cache folder this environment designates: `$HF_HUB_CACHE`, else `<hf home>/hub`.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        if let Some(c) = &self.hf_hub_cache {
            return Some(c.clone());
        }
        self.hf_home_dir().map(|h| h.join("hub"))
    }

    /// The endpoint without a trailing slash.
    pub fn endpoint(&self) -> String {
        self.endpoint
            .as_deref()
            .unwrap_or(DEFAULT_ENDPOINT)
            .trim()
            .trim_end_matches('/')
            .to_string()
    }
}

fn read_token_file(path: &Path) -> Option<Token> {
    let text = std::fs::read_to_string(path).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| Token::new(t, TokenSource::File(path.to_path_buf())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_follows_huggingface_hub_precedence() {
        let mut env = HubEnv {
            home: Some("/home/u".into()),
            ..Default::default()
        };
        assert_eq!(
            env.cache_dir().unwrap(),
            PathBuf::from("/home/u/.cache/huggingface/hub")
        );
        assert_eq!(
            env.token_file(None).unwrap(),
            PathBuf::from("/home/u/.cache/huggingface/token")
        );
        env.xdg_cache_home = Some("/xdg".into());
        assert_eq!(
            env.cache_dir().unwrap(),
            PathBuf::from("/xdg/huggingface/hub")
        );
        env.hf_home = Some("/hf".into());
        assert_eq!(env.cache_dir().unwrap(), PathBuf::from("/hf/hub"));
        assert_eq!(env.token_file(None).unwrap(), PathBuf::from("/hf/token"));
        assert_eq!(
            env.token_file(Some(Path::new("/t"))).unwrap(),
            PathBuf::from("/t")
        );
        env.hf_hub_cache = Some("/cache".into());
        assert_eq!(env.cache_dir().unwrap(), PathBuf::from("/cache"));
    }

    #[test]
    fn endpoint_defaults_and_loses_its_trailing_slash() {
        let mut env = HubEnv::default();
        assert_eq!(env.endpoint(), "https://huggingface.co");
        env.endpoint = Some("http://127.0.0.1:9/mirror/".into());
        assert_eq!(env.endpoint(), "http://127.0.0.1:9/mirror");
    }

    #[test]
    fn a_token_file_is_read_trimmed_and_never_printed() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("token");
        std::fs::write(&f, "hf_secret123\n").unwrap();
        let t = read_token_file(&f).unwrap();
        assert_eq!(t.secret(), "hf_secret123");
        let env = HubEnv {
            token: Some(t),
            ..Default::default()
        };
        let shown = format!("{env:?}");
        assert!(!shown.contains("hf_secret123"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
        std::fs::write(&f, "  \n").unwrap();
        assert!(read_token_file(&f).is_none(), "an empty file is no token");
    }

    #[test]
    fn offline_values() {
        for v in ["1", "true", "YES", "On"] {
            assert!(truthy(v), "{v}");
        }
        for v in ["0", "false", "", "no"] {
            assert!(!truthy(v), "{v}");
        }
    }
}
