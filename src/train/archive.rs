//! Unpacks a `.tar.gz` image-folder archive once into the server's cache.

use super::{Halt, TrainError};
use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::UNIX_EPOCH;

/// True when `path` names a gzipped tarball (`.tar.gz` or `.tgz`).
pub fn is_archive(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase());
    matches!(name, Some(n) if n.ends_with(".tar.gz") || n.ends_with(".tgz"))
}

/// Returns the folder holding the unpacked archive, unpacking it on first use.
///
/// The archive goes to `cache_dir/datasets/<stem>-<key>/`, where `key` hashes
/// the archive's canonical path, size and modification time, so a replaced
/// archive is unpacked afresh. Extraction happens in a temporary sibling
/// folder that is renamed into place only when complete: a crash or a cancel
/// never leaves a half-unpacked folder under the final name. If two runs race,
/// the loser discards its copy and uses the winner's.
pub fn unpack_once(archive: &Path, cache_dir: &Path, cancel: &AtomicBool) -> Result<PathBuf, Halt> {
    let data_err = |what: &str, e: &dyn std::fmt::Display| {
        TrainError::Data(format!("{what} {}: {e}", archive.display()))
    };
    let meta = fs::metadata(archive).map_err(|e| data_err("cannot read archive", &e))?;
    if !meta.is_file() {
        return Err(TrainError::Data(format!("{} is not a file", archive.display())).into());
    }
    let canonical = fs::canonicalize(archive).map_err(|e| data_err("cannot resolve", &e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut hasher = Sha256::new();
    hasher.update(canonical.to_string_lossy().as_bytes());
    hasher.update(meta.len().to_le_bytes());
    hasher.update(mtime.to_le_bytes());
    let key = hex::encode(&hasher.finalize()[..8]);

    let datasets = cache_dir.join("datasets");
    let final_dir = datasets.join(format!("{}-{key}", archive_stem(archive)));
    if final_dir.is_dir() {
        return Ok(final_dir);
    }
    fs::create_dir_all(&datasets).map_err(|e| {
        TrainError::Data(format!(
            "cannot create cache folder {}: {e}",
            datasets.display()
        ))
    })?;
    let tmp_dir = datasets.join(format!(
        ".tmp-{}-{}-{:x}",
        archive_stem(archive),
        std::process::id(),
        rand::random::<u64>()
    ));
    fs::create_dir(&tmp_dir).map_err(|e| {
        TrainError::Data(format!(
            "cannot create cache folder {}: {e}",
            tmp_dir.display()
        ))
    })?;

    let result = extract(archive, &tmp_dir, cancel);
    if let Err(e) = result {
        // Best effort: a leftover temp folder is harmless (never read) but wastes space.
        let _ = fs::remove_dir_all(&tmp_dir);
        return Err(e);
    }
    match fs::rename(&tmp_dir, &final_dir) {
        Ok(()) => Ok(final_dir),
        Err(_) if final_dir.is_dir() => {
            // Another run finished first; its copy is complete by construction.
            let _ = fs::remove_dir_all(&tmp_dir);
            Ok(final_dir)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp_dir);
            Err(TrainError::Data(format!(
                "cannot move unpacked archive into {}: {e}",
                final_dir.display()
            ))
            .into())
        }
    }
}

/// Extracts regular files and folders only: links and devices in a dataset
/// archive are never needed, and skipping them removes a way to write outside
/// `dest`. `unpack_in` also refuses `..` paths.
fn extract(archive: &Path, dest: &Path, cancel: &AtomicBool) -> Result<(), Halt> {
    let file = fs::File::open(archive)
        .map_err(|e| TrainError::Data(format!("cannot open archive {}: {e}", archive.display())))?;
    let mut tar = tar::Archive::new(GzDecoder::new(std::io::BufReader::new(file)));
    let bad = |e: std::io::Error| {
        TrainError::Data(format!(
            "corrupt or unreadable archive {}: {e}",
            archive.display()
        ))
    };
    for (i, entry) in tar.entries().map_err(bad)?.enumerate() {
        // Checking every 256 entries keeps cancel latency well under a second.
        if i % 256 == 0 && cancel.load(Ordering::Relaxed) {
            return Err(Halt::Cancelled);
        }
        let mut entry = entry.map_err(bad)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            continue;
        }
        entry.unpack_in(dest).map_err(bad)?;
    }
    Ok(())
}

/// File name without `.tar.gz` / `.tgz`, restricted to safe characters.
fn archive_stem(archive: &Path) -> String {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    let cut = if lower.ends_with(".tar.gz") {
        name.len() - 7
    } else if lower.ends_with(".tgz") {
        name.len() - 4
    } else {
        name.len()
    };
    let stem: String = name[..cut]
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if stem.is_empty() {
        "archive".to_string()
    } else {
        stem
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;

    fn make_archive(dir: &Path) -> PathBuf {
        let path = dir.join("tiny.tar.gz");
        let file = fs::File::create(&path).unwrap();
        let mut builder = tar::Builder::new(GzEncoder::new(file, Compression::fast()));
        let data = b"hello";
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "top/train/a/x.txt", &data[..])
            .unwrap();
        builder.into_inner().unwrap().finish().unwrap();
        path
    }

    #[test]
    fn unpacks_once_into_the_cache_and_reuses_it() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = make_archive(tmp.path());
        let cache = tmp.path().join("cache");
        let cancel = AtomicBool::new(false);
        let dir = unpack_once(&archive, &cache, &cancel)
            .map_err(|_| "unpack")
            .unwrap();
        assert!(dir.starts_with(cache.join("datasets")));
        assert!(dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("tiny-"));
        assert_eq!(fs::read(dir.join("top/train/a/x.txt")).unwrap(), b"hello");
        // Second call: same folder, and no temp folder left behind.
        fs::write(dir.join("marker"), b"").unwrap();
        let again = unpack_once(&archive, &cache, &cancel)
            .map_err(|_| "unpack")
            .unwrap();
        assert_eq!(dir, again);
        assert!(
            again.join("marker").exists(),
            "second call must not re-extract"
        );
        let leftovers: Vec<_> = fs::read_dir(cache.join("datasets"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".tmp")
            })
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn corrupt_archive_fails_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("bad.tar.gz");
        fs::write(&archive, b"this is not gzip").unwrap();
        let cache = tmp.path().join("cache");
        let err = unpack_once(&archive, &cache, &AtomicBool::new(false));
        match err {
            Err(Halt::Error(TrainError::Data(msg))) => assert!(msg.contains("bad.tar.gz"), "{msg}"),
            _ => panic!("expected a data error"),
        }
        assert_eq!(fs::read_dir(cache.join("datasets")).unwrap().count(), 0);
    }

    #[test]
    fn stems() {
        assert_eq!(
            archive_stem(Path::new("/x/cifar10-jpg.tar.gz")),
            "cifar10-jpg"
        );
        assert_eq!(archive_stem(Path::new("a b.TGZ")), "a_b");
        assert!(is_archive(Path::new("x.TAR.GZ")) && !is_archive(Path::new("x.tar")));
    }
}
