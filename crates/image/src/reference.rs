//! Image names: [`Reference`], parsed and normalised the way Docker does it
//! (`busybox` is `docker.io/library/busybox:latest`), in one function.
//!
//! Grammar (distribution's reference grammar): `[registry/]path[:tag][@digest]`.
//! The first path component is a registry only if it contains `.` or `:`,
//! is `localhost`, or has upper-case letters (which a repository may not
//! have); `index.docker.io` is `docker.io`; a one-component Docker Hub name
//! gets `library/`. A name with neither tag nor digest gets the tag `latest`.

use std::fmt;
use std::str::FromStr;

use rbuild_cache::Digest;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The registry of unqualified names.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag of names given without tag or digest.
pub const DEFAULT_TAG: &str = "latest";
const LEGACY_DEFAULT_REGISTRY: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// Docker's limit on the length of `registry/repository`.
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A normalised image reference: registry, repository, and a tag and/or a
/// manifest digest.
///
/// ```
/// use rbuild_image::Reference;
/// let r = Reference::parse("busybox").unwrap();
/// assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
/// assert_eq!(r.familiar(), "busybox:latest");
/// let r = Reference::parse("localhost:5000/team/app:1").unwrap();
/// assert_eq!((r.registry(), r.repository(), r.tag()), ("localhost:5000", "team/app", Some("1")));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why a string is not a valid image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The string is empty.
    #[error("invalid reference format: empty name")]
    Empty,
    /// The repository has upper-case letters.
    #[error("invalid reference format {0:?}: repository name must be lowercase")]
    Uppercase(String),
    /// A 64-hex-digit name is an image ID, not a name.
    #[error("invalid repository name {0:?}: cannot specify 64-byte hexadecimal strings")]
    HexName(String),
    /// The registry part is not a host name or address with optional port.
    #[error("invalid reference format {input:?}: bad registry {registry:?}")]
    Registry {
        /// The whole input.
        input: String,
        /// The registry part.
        registry: String,
    },
    /// A path component breaks the grammar (`[a-z0-9]+` joined by `.`, `_`, `__` or dashes).
    #[error("invalid reference format {input:?}: bad path component {component:?}")]
    Component {
        /// The whole input.
        input: String,
        /// The offending component.
        component: String,
    },
    /// The tag is not `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error("invalid reference format {input:?}: bad tag {tag:?}")]
    Tag {
        /// The whole input.
        input: String,
        /// The tag.
        tag: String,
    },
    /// The digest is malformed or not sha256.
    #[error("invalid reference format {input:?}: {source}")]
    Digest {
        /// The whole input.
        input: String,
        /// Why the digest is invalid.
        #[source]
        source: rbuild_cache::DigestError,
    },
    /// `registry/repository` is longer than 255 characters.
    #[error(
        "invalid reference format {0:?}: repository name must not be more than 255 characters"
    )]
    TooLong(String),
}

impl Reference {
    /// Parses and normalises a reference as `docker pull` does.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        // The digest comes last and cannot contain '@'.
        let (rest, digest) = match input.split_once('@') {
            Some((name, d)) => {
                let digest = d
                    .parse::<Digest>()
                    .map_err(|source| ReferenceError::Digest {
                        input: input.to_string(),
                        source,
                    })?;
                (name, Some(digest))
            }
            None => (input, None),
        };
        // A tag follows the last ':' that comes after the last '/' (a ':'
        // before a '/' is a registry port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(&rest[at + 1..]))
            }
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(ReferenceError::Tag {
                    input: input.to_string(),
                    tag: t.to_string(),
                });
            }
        }
        if is_hex64(name) {
            return Err(ReferenceError::HexName(input.to_string()));
        }
        let (registry, path) = split_registry(name);
        let registry = if registry == LEGACY_DEFAULT_REGISTRY {
            DEFAULT_REGISTRY
        } else {
            registry
        };
        if registry != DEFAULT_REGISTRY && !valid_registry(registry) {
            return Err(ReferenceError::Registry {
                input: input.to_string(),
                registry: registry.to_string(),
            });
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase(input.to_string()));
        }
        for component in path.split('/') {
            if !valid_component(component) {
                return Err(ReferenceError::Component {
                    input: input.to_string(),
                    component: component.to_string(),
                });
            }
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("{OFFICIAL_REPO_PREFIX}{path}")
        } else {
            path.to_string()
        };
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(ReferenceError::TooLong(input.to_string()));
        }
        let tag = match (tag, digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// The registry host (with port), e.g. `docker.io`, `localhost:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag; `None` only for a digest reference given without a tag.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The manifest digest of a digest reference.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The short name Docker shows: `busybox`, `user/app`, `localhost:5000/app`.
    pub fn familiar_name(&self) -> String {
        if self.registry == DEFAULT_REGISTRY {
            self.repository
                .strip_prefix(OFFICIAL_REPO_PREFIX)
                .filter(|r| !r.contains('/'))
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            self.name()
        }
    }

    /// The short form with tag and digest: `busybox:latest`, `app:1`.
    pub fn familiar(&self) -> String {
        let mut s = self.familiar_name();
        self.push_suffix(&mut s);
        s
    }

    /// The same name with another tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        if !valid_tag(tag) {
            return Err(ReferenceError::Tag {
                input: format!("{}:{tag}", self.name()),
                tag: tag.to_string(),
            });
        }
        Ok(Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        })
    }

    /// The same name pinned to a manifest digest (keeping the tag).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    fn push_suffix(&self, s: &mut String) {
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
    }
}

/// Splits `name` into (registry, path) by Docker's rule.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DEFAULT_REGISTRY, name),
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum_lower(b[0]) || !is_alnum_lower(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum_lower(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or one or more '-'.
        let start = i;
        while i < b.len() && !is_alnum_lower(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

/// A host name (dot-separated labels of letters, digits and inner dashes)
/// or a bracketed IPv6 address, with an optional numeric port.
fn valid_registry(r: &str) -> bool {
    let (host, port) = if let Some(v6) = r.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, rest)) => {
                if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                    return false;
                }
                match rest {
                    "" => return true,
                    p => match p.strip_prefix(':') {
                        Some(port) => {
                            return !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                        }
                        None => return false,
                    },
                }
            }
            None => return false,
        }
    } else {
        match r.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
        })
}

impl fmt::Display for Reference {
    /// The full normalised form: `docker.io/library/busybox:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.name();
        self.push_suffix(&mut s);
        f.write_str(&s)
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Reference, ReferenceError> {
        Reference::parse(s)
    }
}

impl Serialize for Reference {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Reference, D::Error> {
        let s = String::deserialize(d)?;
        Reference::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalisation_table() {
        let cases = [
            (
                "busybox",
                "docker.io/library/busybox:latest",
                "busybox:latest",
            ),
            (
                "busybox:1.36",
                "docker.io/library/busybox:1.36",
                "busybox:1.36",
            ),
            (
                "library/busybox",
                "docker.io/library/busybox:latest",
                "busybox:latest",
            ),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest",
                "busybox:latest",
            ),
            (
                "index.docker.io/library/busybox:x",
                "docker.io/library/busybox:x",
                "busybox:x",
            ),
            ("user/app:1", "docker.io/user/app:1", "user/app:1"),
            ("app:1", "docker.io/library/app:1", "app:1"),
            (
                "localhost/app",
                "localhost/app:latest",
                "localhost/app:latest",
            ),
            (
                "localhost:5000/a/b:v2",
                "localhost:5000/a/b:v2",
                "localhost:5000/a/b:v2",
            ),
            (
                "quay.io/org/img:tag",
                "quay.io/org/img:tag",
                "quay.io/org/img:tag",
            ),
            (
                "127.0.0.1:5000/x",
                "127.0.0.1:5000/x:latest",
                "127.0.0.1:5000/x:latest",
            ),
            ("[::1]:5000/x:t", "[::1]:5000/x:t", "[::1]:5000/x:t"),
            (
                "myhost/app",
                "docker.io/myhost/app:latest",
                "myhost/app:latest",
            ),
            (
                "a-b__c_d/e---f",
                "docker.io/a-b__c_d/e---f:latest",
                "a-b__c_d/e---f:latest",
            ),
            (
                "MyRegistry/app",
                "MyRegistry/app:latest",
                "MyRegistry/app:latest",
            ),
        ];
        for (input, full, short) in cases {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), full, "{input}");
            assert_eq!(r.familiar(), short, "{input}");
            assert_eq!(Reference::parse(full).unwrap(), r, "{full} round trip");
        }
    }

    #[test]
    fn digest_references() {
        let r = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().to_string(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        assert_eq!(r.familiar(), format!("busybox@{D}"));
        let r = Reference::parse(&format!("localhost:5000/app:1@{D}")).unwrap();
        assert_eq!(r.tag(), Some("1"));
        assert_eq!(r.registry(), "localhost:5000");
        assert!(Reference::parse("busybox@sha256:abc").is_err());
        assert!(Reference::parse(&format!("busybox@md5:{}", &D[7..])).is_err());
    }

    #[test]
    fn rejects_invalid_names() {
        let bad = [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "bad..name",
            "bad_-name",
            "-lead",
            "trail-",
            "a//b",
            "/abs",
            "app/",
            "host:port/app",
            "localhost:/app",
            "app:a b",
            "a:b:c",
        ];
        for input in bad {
            assert!(Reference::parse(input).is_err(), "{input:?} accepted");
        }
        let long_tag = format!("app:{}", "t".repeat(129));
        assert!(matches!(
            Reference::parse(&long_tag),
            Err(ReferenceError::Tag { .. })
        ));
        let long_name = "a".repeat(250) + "/bbbbbbb";
        assert!(matches!(
            Reference::parse(&long_name),
            Err(ReferenceError::TooLong(_))
        ));
        assert!(matches!(
            Reference::parse(&D[7..]),
            Err(ReferenceError::HexName(_))
        ));
        assert!(matches!(
            Reference::parse("Busybox"),
            Err(ReferenceError::Uppercase(_))
        ));
    }

    #[test]
    fn tag_and_digest_helpers() {
        let r = Reference::parse("app:1").unwrap();
        let t = r.with_tag("2").unwrap();
        assert_eq!(t.to_string(), "docker.io/library/app:2");
        assert!(r.with_tag("bad tag").is_err());
        let d: Digest = D.parse().unwrap();
        assert_eq!(
            r.with_digest(d).to_string(),
            format!("docker.io/library/app:1@{D}")
        );
        assert_eq!(r.name(), "docker.io/library/app");
        assert_eq!(r.familiar_name(), "app");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "\"docker.io/library/app:1\"");
        assert_eq!(serde_json::from_str::<Reference>(&json).unwrap(), r);
    }
}
