//! A conversion reads only the checkpoint: every file must resolve inside the checkpoint's folder (or, for
//! a folder of the Hugging Face cache, inside that repo's blob store, where the snapshot's links point)
//! and be a regular file. A `chat_template.jinja -> /etc/passwd` link or a tokenizer.json pointing at a
//! credentials file is refused rather than embedded in a model file the user then shares; a FIFO is
//! refused rather than blocking the conversion forever.

use std::path::{Path, PathBuf};

use crate::error::{ConvertError, Result};

/// `path`, a file of the checkpoint folder it sits in, checked as the module says; its resolved path.
pub fn checked(path: &Path) -> Result<PathBuf> {
    let refuse = |reason: String| ConvertError::Tokenizer {
        path: path.to_path_buf(),
        reason,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let root = dir.canonicalize().map_err(|e| ConvertError::io(dir, e))?;
    let real = path.canonicalize().map_err(|e| ConvertError::io(path, e))?;
    // A snapshot of the Hugging Face cache: models--ORG--NAME/snapshots/COMMIT/FILE -> ../../blobs/HASH.
    let blobs = (root.parent().and_then(Path::file_name) == Some("snapshots".as_ref()))
        .then(|| {
            root.parent()
                .and_then(Path::parent)
                .map(|r| r.join("blobs"))
        })
        .flatten();
    let inside = real.starts_with(&root) || blobs.as_ref().is_some_and(|b| real.starts_with(b));
    if !inside {
        return Err(refuse(format!(
            "resolves to {}, outside the checkpoint folder {}: a conversion reads only the checkpoint",
            real.display(),
            root.display()
        )));
    }
    let meta = std::fs::metadata(&real).map_err(|e| ConvertError::io(path, e))?;
    if !meta.is_file() {
        return Err(refuse(
            "is not a regular file (a FIFO, device, socket or folder): a conversion reads regular files only"
                .into(),
        ));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::checked;

    #[test]
    fn links_out_of_the_folder_and_fifos_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ck = tmp.path().join("ck");
        std::fs::create_dir(&ck).unwrap();
        std::fs::write(ck.join("config.json"), "{}").unwrap();
        std::fs::write(tmp.path().join("secret"), "token").unwrap();
        assert!(checked(&ck.join("config.json")).is_ok());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("../secret", ck.join("chat_template.jinja")).unwrap();
            let e = checked(&ck.join("chat_template.jinja"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("outside the checkpoint folder"), "{e}");
            std::os::unix::fs::symlink("config.json", ck.join("alias.json")).unwrap();
            assert!(
                checked(&ck.join("alias.json")).is_ok(),
                "a link inside is fine"
            );
            let fifo = ck.join("model.safetensors");
            let ok = std::process::Command::new("mkfifo").arg(&fifo).status();
            if ok.is_ok_and(|s| s.success()) {
                let e = checked(&fifo).unwrap_err().to_string();
                assert!(e.contains("not a regular file"), "{e}");
            }
        }
    }

    #[test]
    #[cfg(unix)]
    fn the_hub_cache_blob_store_is_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--org--name");
        let snap = repo.join("snapshots/0123456789abcdef0123456789abcdef01234567");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("blobs/abc"), "{}").unwrap();
        std::os::unix::fs::symlink("../../blobs/abc", snap.join("config.json")).unwrap();
        assert!(checked(&snap.join("config.json")).is_ok());
    }
}
