//! Cache keys: [`KeyInputs`] (everything that determines a step's result)
//! and its canonical encoding. A key is the sha256 of that encoding: fields
//! in a fixed order, each tagged, strings length-prefixed, maps sorted.
//! Never `Debug` or serde output, whose formats may change under us.
//!
//! The same [`KeyInputs`] is what `--explain` shows and what the build
//! record keeps for comparing with the next build.

use std::collections::BTreeMap;

use rbuild_cache::{Digest, Hasher};
use serde::{Deserialize, Serialize};

/// Bump when the meaning of a key changes (new field, new step semantics),
/// so old cache entries are never taken for new ones.
const KEY_SCHEME: &str = "rbuild-step-key-v1";

/// What a step builds on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ParentInput {
    /// `FROM scratch`: nothing.
    Scratch,
    /// A base image, by manifest digest (the name is for people only and is
    /// not hashed).
    Image {
        /// The name as written after expansion.
        name: String,
        /// Its manifest digest.
        digest: Digest,
    },
    /// The previous step (or, for `FROM stage`, that stage's last step).
    Step {
        /// Its key.
        key: Digest,
    },
}

/// One file selected by a COPY/ADD (or a bind mount of the context), for
/// `--explain`; only the selection's combined digest enters the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInput {
    /// Path relative to the context root.
    pub path: String,
    /// Digest of its content and metadata.
    pub digest: Digest,
}

/// Where one COPY/ADD source set or RUN mount comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceInput {
    /// Files of the build context.
    Context {
        /// The source patterns after expansion.
        patterns: Vec<String>,
        /// The selection's digest (paths, contents, modes, owners, link
        /// targets; never mtimes).
        digest: Digest,
        /// Per-file digests (explain only).
        files: Vec<FileInput>,
    },
    /// Paths in another stage's result (`--from=stage`).
    Stage {
        /// The stage name or index.
        stage: String,
        /// Its final step key.
        key: Digest,
        /// The source paths.
        paths: Vec<String>,
    },
    /// Paths in an image of the store (`--from=image`).
    Image {
        /// The name as written.
        name: String,
        /// Its manifest digest.
        digest: Digest,
        /// The source paths.
        paths: Vec<String>,
    },
    /// A downloaded URL (ADD): the checksum given, or the content digest.
    Url {
        /// The URL.
        url: String,
        /// Content digest.
        digest: Digest,
    },
    /// An inline heredoc file, by content digest.
    Inline {
        /// Its name.
        name: String,
        /// Digest of the (expanded) content.
        digest: Digest,
    },
}

/// Everything that determines a step's result: the cache key is the digest
/// of the canonical encoding of this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInputs {
    /// What the step builds on.
    pub parent: ParentInput,
    /// The target platform (`linux/amd64`).
    pub platform: String,
    /// The instruction after expansion, flags included (secrets are named
    /// by id only, never by value).
    pub instruction: String,
    /// The build args in scope with their values (for RUN they are in the
    /// environment; for everything else they may have fed the expansion).
    pub args: BTreeMap<String, String>,
    /// The image environment (ENV) at this step.
    pub env: BTreeMap<String, String>,
    /// WORKDIR at this step.
    pub workdir: String,
    /// USER at this step.
    pub user: String,
    /// SHELL at this step.
    pub shell: Vec<String>,
    /// Network mode the step runs with (RUN only; empty otherwise).
    pub network: String,
    /// COPY/ADD sources and RUN mount sources, in instruction order.
    pub sources: Vec<SourceInput>,
}

/// Canonical byte encoding: a tag byte, then a length-prefixed payload.
struct Encoder(Hasher);

impl Encoder {
    fn bytes(&mut self, tag: u8, b: &[u8]) {
        self.0.update(&[tag]);
        self.0.update(&(b.len() as u64).to_be_bytes());
        self.0.update(b);
    }

    fn str(&mut self, tag: u8, s: &str) {
        self.bytes(tag, s.as_bytes());
    }

    fn digest(&mut self, tag: u8, d: &Digest) {
        self.bytes(tag, d.as_raw());
    }

    fn count(&mut self, tag: u8, n: usize) {
        self.bytes(tag, &(n as u64).to_be_bytes());
    }

    fn strs(&mut self, tag: u8, v: &[String]) {
        self.count(tag, v.len());
        for s in v {
            self.str(b's', s);
        }
    }

    fn map(&mut self, tag: u8, m: &BTreeMap<String, String>) {
        self.count(tag, m.len());
        for (k, v) in m {
            self.str(b'k', k);
            self.str(b'v', v);
        }
    }
}

impl KeyInputs {
    /// The cache key: sha256 of the canonical encoding.
    pub fn key(&self) -> Digest {
        let mut e = Encoder(Hasher::new());
        e.str(0, KEY_SCHEME);
        match &self.parent {
            ParentInput::Scratch => e.str(1, "scratch"),
            ParentInput::Image { digest, .. } => e.digest(2, digest),
            ParentInput::Step { key } => e.digest(3, key),
        }
        e.str(4, &self.platform);
        e.str(5, &self.instruction);
        e.map(6, &self.args);
        e.map(7, &self.env);
        e.str(8, &self.workdir);
        e.str(9, &self.user);
        e.strs(10, &self.shell);
        e.str(11, &self.network);
        e.count(12, self.sources.len());
        for s in &self.sources {
            match s {
                SourceInput::Context {
                    patterns, digest, ..
                } => {
                    e.strs(20, patterns);
                    e.digest(21, digest);
                }
                SourceInput::Stage { key, paths, .. } => {
                    e.digest(22, key);
                    e.strs(23, paths);
                }
                SourceInput::Image { digest, paths, .. } => {
                    e.digest(24, digest);
                    e.strs(25, paths);
                }
                SourceInput::Url { url, digest } => {
                    e.str(26, url);
                    e.digest(27, digest);
                }
                SourceInput::Inline { name, digest } => {
                    e.str(28, name);
                    e.digest(29, digest);
                }
            }
        }
        e.0.finish()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> KeyInputs {
        KeyInputs {
            parent: ParentInput::Scratch,
            platform: "linux/amd64".into(),
            instruction: "COPY a /a".into(),
            args: BTreeMap::from([("A".into(), "1".into())]),
            env: BTreeMap::new(),
            workdir: "/".into(),
            user: String::new(),
            shell: vec!["/bin/sh".into(), "-c".into()],
            network: String::new(),
            sources: vec![SourceInput::Context {
                patterns: vec!["a".into()],
                digest: Digest::of_bytes(b"a"),
                files: vec![FileInput {
                    path: "a".into(),
                    digest: Digest::of_bytes(b"a"),
                }],
            }],
        }
    }

    #[test]
    fn key_is_stable() {
        // A fixed value: if this changes, every stored cache entry is
        // invalidated, so bump KEY_SCHEME deliberately instead.
        assert_eq!(sample().key(), sample().clone().key());
        let json = serde_json::to_string(&sample()).unwrap();
        let back: KeyInputs = serde_json::from_str(&json).unwrap();
        assert_eq!(back.key(), sample().key());
    }

    #[test]
    fn every_field_changes_the_key() {
        let base = sample().key();
        let mut variants = Vec::new();
        let mut k = sample();
        k.parent = ParentInput::Step {
            key: Digest::of_bytes(b"p"),
        };
        variants.push(k);
        let mut k = sample();
        k.platform = "linux/arm64".into();
        variants.push(k);
        let mut k = sample();
        k.instruction = "COPY a /b".into();
        variants.push(k);
        let mut k = sample();
        k.args.insert("A".into(), "2".into());
        variants.push(k);
        let mut k = sample();
        k.env.insert("A".into(), "1".into());
        variants.push(k);
        let mut k = sample();
        k.workdir = "/x".into();
        variants.push(k);
        let mut k = sample();
        k.user = "1000".into();
        variants.push(k);
        let mut k = sample();
        k.shell = vec!["/bin/bash".into(), "-c".into()];
        variants.push(k);
        let mut k = sample();
        k.network = "none".into();
        variants.push(k);
        let mut k = sample();
        k.sources.clear();
        variants.push(k);
        let mut k = sample();
        if let SourceInput::Context { digest, .. } = &mut k.sources[0] {
            *digest = Digest::of_bytes(b"b");
        }
        variants.push(k);
        for v in &variants {
            assert_ne!(v.key(), base, "{v:?}");
        }
    }

    #[test]
    fn explain_only_fields_do_not_change_the_key() {
        let mut k = sample();
        if let SourceInput::Context { files, .. } = &mut k.sources[0] {
            files.clear();
        }
        assert_eq!(k.key(), sample().key());
        let mut k = sample();
        k.parent = ParentInput::Image {
            name: "a".into(),
            digest: Digest::of_bytes(b"i"),
        };
        let mut k2 = k.clone();
        k2.parent = ParentInput::Image {
            name: "b".into(),
            digest: Digest::of_bytes(b"i"),
        };
        assert_eq!(k.key(), k2.key());
    }

    #[test]
    fn strings_are_delimited() {
        // "ab"+"c" and "a"+"bc" must not collide.
        let mut a = sample();
        a.workdir = "ab".into();
        a.user = "c".into();
        let mut b = sample();
        b.workdir = "a".into();
        b.user = "bc".into();
        assert_ne!(a.key(), b.key());
    }
}
