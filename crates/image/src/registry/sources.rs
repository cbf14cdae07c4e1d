//! Where blobs came from: for each blob pulled from or pushed to a registry,
//! the `registry/repository` names that hold it. Push uses this to ask the
//! registry for a cross-repository mount instead of uploading the bytes
//! again (docker keeps the same record as its "v2 metadata").
//!
//! Stored under `<store root>/registry/sources/<hex>`, one name per line;
//! losing it only costs an upload, so it is advisory.

use std::fs;
use std::path::{Path, PathBuf};

use rbuild_cache::{write_atomic, Digest};

/// How many repositories are remembered per blob (the newest win).
const MAX_SOURCES: usize = 16;

/// The blob-source records of one store.
#[derive(Debug, Clone)]
pub(crate) struct BlobSources {
    dir: PathBuf,
}

impl BlobSources {
    /// The records of the store at `root`.
    pub fn new(root: &Path) -> BlobSources {
        BlobSources {
            dir: root.join("registry").join("sources"),
        }
    }

    /// The repositories of `registry` known to hold `digest`.
    pub fn repositories(&self, digest: &Digest, registry: &str) -> Vec<String> {
        let prefix = format!("{registry}/");
        self.read(digest)
            .into_iter()
            .filter_map(|line| line.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }

    /// Records that `registry/repository` holds `digest`. Failures are
    /// ignored: the record is an optimisation.
    pub fn record(&self, digest: &Digest, registry: &str, repository: &str) {
        let entry = format!("{registry}/{repository}");
        let mut lines = self.read(digest);
        lines.retain(|l| *l != entry);
        lines.insert(0, entry);
        lines.truncate(MAX_SOURCES);
        let mut text = lines.join("\n");
        text.push('\n');
        if fs::create_dir_all(&self.dir).is_ok() {
            let _ = write_atomic(&self.dir.join(digest.hex()), text.as_bytes());
        }
    }

    fn read(&self, digest: &Digest) -> Vec<String> {
        fs::read_to_string(self.dir.join(digest.hex()))
            .map(|t| {
                t.lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_newest_first_per_registry() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobSources::new(dir.path());
        let d = Digest::of_bytes(b"x");
        assert!(s.repositories(&d, "r:1").is_empty());
        s.record(&d, "r:1", "a/b");
        s.record(&d, "r:2", "c");
        s.record(&d, "r:1", "d");
        s.record(&d, "r:1", "a/b");
        assert_eq!(s.repositories(&d, "r:1"), vec!["a/b", "d"]);
        assert_eq!(s.repositories(&d, "r:2"), vec!["c"]);
    }
}
