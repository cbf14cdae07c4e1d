//! OCI manifest, index and descriptor types (own serde types rather than the
//! `oci-spec` crate: they must also carry Docker schema 2 media types
//! unchanged and encode deterministically with exactly the spec's field
//! names and order), plus the media type names.

use std::collections::BTreeMap;

use rbuild_cache::Digest;
use serde::{Deserialize, Serialize};

/// OCI image manifest.
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image manifest, schema 2.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Annotation naming a manifest in an OCI layout: the tag (BuildKit,
/// rbuild) or the full name (some other tools).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation holding the full normalised image name.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

/// `oci-layout` file content (image-spec 1.0 layout).
pub const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// Whether `media_type` names a single-image manifest (OCI or Docker).
pub fn is_manifest(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_OCI_MANIFEST || media_type == MEDIA_TYPE_DOCKER_MANIFEST
}

/// Whether `media_type` names an index or manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_OCI_INDEX || media_type == MEDIA_TYPE_DOCKER_MANIFEST_LIST
}

/// A content descriptor: what a blob is, its digest and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced blob.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Alternative download locations (foreign layers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Annotations (names in an index).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Platform of a manifest in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// A descriptor without annotations or platform.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
        }
    }
}

/// The `platform` object of an index entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture.
    pub architecture: String,
    /// Operating system.
    pub os: String,
    /// OS version.
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// OS features.
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest (OCI, or Docker schema 2, which has the same shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's own media type (optional in OCI, written by rbuild).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// The config blob.
    pub config: Descriptor,
    /// The layer blobs, lowest first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Manifest annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// Parses a manifest blob, refusing documents that are not image manifests.
    pub fn from_json(data: &[u8]) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        if m.schema_version != 2 {
            return Err(format!("unsupported schemaVersion {}", m.schema_version));
        }
        if !m.media_type.is_empty() && !is_manifest(&m.media_type) {
            return Err(format!("{} is not an image manifest", m.media_type));
        }
        Ok(m)
    }

    /// The canonical (compact, fixed-order) encoding.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Manifest always serialises (string keys only)")
    }

    /// The manifest's media type, defaulting to OCI when the document has none.
    pub fn media_type(&self) -> &str {
        if self.media_type.is_empty() {
            MEDIA_TYPE_OCI_MANIFEST
        } else {
            &self.media_type
        }
    }
}

/// An image index (OCI) or manifest list (Docker); also `index.json` of an
/// OCI layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The index's media type.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// The manifests (or nested indexes) it lists.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// Index annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for Index {
    fn default() -> Index {
        Index {
            schema_version: 2,
            media_type: MEDIA_TYPE_OCI_INDEX.to_string(),
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }
}

impl Index {
    /// Parses an index document.
    pub fn from_json(data: &[u8]) -> Result<Index, String> {
        let i: Index = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        if i.schema_version != 2 {
            return Err(format!("unsupported schemaVersion {}", i.schema_version));
        }
        if !i.media_type.is_empty() && !is_index(&i.media_type) {
            return Err(format!("{} is not an image index", i.media_type));
        }
        Ok(i)
    }

    /// The canonical encoding.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an Index always serialises (string keys only)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trip_with_exact_names() {
        let m = Manifest {
            schema_version: 2,
            media_type: MEDIA_TYPE_OCI_MANIFEST.into(),
            config: Descriptor::new(MEDIA_TYPE_OCI_CONFIG, Digest::of_bytes(b"c"), 10),
            layers: vec![Descriptor::new(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Digest::of_bytes(b"l"),
                20,
            )],
            annotations: BTreeMap::new(),
        };
        let json = String::from_utf8(m.to_json()).unwrap();
        assert!(json.starts_with(
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:"#
        ), "{json}");
        assert!(json.ends_with(r#","size":20}]}"#), "{json}");
        assert_eq!(Manifest::from_json(json.as_bytes()).unwrap(), m);
    }

    #[test]
    fn rejects_non_manifests() {
        let idx = Index::default().to_json();
        assert!(Manifest::from_json(&idx).is_err());
        assert!(Manifest::from_json(b"{").is_err());
        assert!(Manifest::from_json(br#"{"schemaVersion":1,"config":{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0}}"#).is_err());
        assert!(Index::from_json(b"[]").is_err());
    }

    #[test]
    fn descriptor_with_platform_and_annotations() {
        let mut d = Descriptor::new(MEDIA_TYPE_OCI_MANIFEST, Digest::of_bytes(b"m"), 1);
        d.annotations.insert(ANNOTATION_REF_NAME.into(), "1".into());
        d.platform = Some(Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            os_version: None,
            os_features: vec![],
            variant: Some("v8".into()),
        });
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains(r#""annotations":{"org.opencontainers.image.ref.name":"1"},"platform":{"architecture":"arm64","os":"linux","variant":"v8"}"#), "{json}");
        assert_eq!(serde_json::from_str::<Descriptor>(&json).unwrap(), d);
    }
}
