//! The parts of manifests and indexes the distribution protocol needs: which
//! kind a document is, which blobs it references, and which child of an
//! index matches a platform. The image store owns the full manifest type;
//! this is only the read-only view used while moving bytes.

use serde::Deserialize;

use rbuild_cache::Digest;

use super::platform::Platform;

// The media types are the store's; short names keep the matches below readable.
use crate::manifest::{
    MEDIA_TYPE_DOCKER_MANIFEST as DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST as DOCKER_MANIFEST_LIST, MEDIA_TYPE_OCI_INDEX as OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST as OCI_MANIFEST,
};

/// Docker schema 1 (signed) manifests: obsolete, refused with a clear error.
const DOCKER_SCHEMA1: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// The `Accept` header for manifest requests: every kind rbuild can use.
pub(crate) const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Manifests larger than this are refused (containerd uses the same bound):
/// they are read into memory, and a hostile registry must not exhaust it.
pub(crate) const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// A content descriptor as it appears in manifests and indexes.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<DescriptorPlatform>,
}

/// The `platform` object of an index entry.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DescriptorPlatform {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl DescriptorPlatform {
    fn to_platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone().filter(|v| !v.is_empty()),
        }
    }
}

/// What a fetched document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A single-platform image manifest (OCI or Docker schema 2).
    Manifest,
    /// A multi-platform index (OCI index or Docker manifest list).
    Index,
}

/// A manifest or index, parsed just enough to walk it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestView {
    #[serde(default)]
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl ManifestView {
    /// Parses `bytes`; `content_type` is the HTTP `Content-Type`, which wins
    /// over the document's own `mediaType` when it names a known kind.
    pub fn parse(
        bytes: &[u8],
        content_type: Option<&str>,
    ) -> Result<(ManifestView, Kind, String), String> {
        let view: ManifestView =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid manifest JSON: {e}"))?;
        let header = content_type
            .map(|c| c.split(';').next().unwrap_or(c).trim().to_string())
            .filter(|c| known(c) || DOCKER_SCHEMA1.contains(&c.as_str()));
        let media_type = header
            .or_else(|| view.media_type.clone())
            .unwrap_or_else(|| {
                // Old OCI documents may omit mediaType: tell them apart by shape.
                if view.manifests.is_empty() && view.config.is_some() {
                    OCI_MANIFEST.to_string()
                } else {
                    OCI_INDEX.to_string()
                }
            });
        if DOCKER_SCHEMA1.contains(&media_type.as_str()) || view.schema_version == 1 {
            return Err("Docker schema 1 manifests are not supported; push the image again with a current client".into());
        }
        let kind = match media_type.as_str() {
            OCI_MANIFEST | DOCKER_MANIFEST => Kind::Manifest,
            OCI_INDEX | DOCKER_MANIFEST_LIST => Kind::Index,
            other => return Err(format!("unsupported manifest media type {other:?}")),
        };
        if kind == Kind::Manifest && view.config.is_none() {
            return Err("image manifest has no config".into());
        }
        Ok((view, kind, media_type))
    }

    /// The blobs an image manifest references: config first, then layers.
    pub fn blobs(&self) -> Vec<Descriptor> {
        self.config
            .iter()
            .chain(self.layers.iter())
            .cloned()
            .collect()
    }

    /// The index entry to use for `want`: the first matching image manifest
    /// (attestation entries, which have platform `unknown/unknown`, never
    /// match a real platform).
    pub fn select(&self, want: &Platform) -> Option<&Descriptor> {
        self.manifests.iter().find(|d| {
            known_manifest(&d.media_type)
                && d.platform
                    .as_ref()
                    .is_some_and(|p| want.matches(&p.to_platform()))
        })
    }

    /// The platforms an index lists, for error messages.
    pub fn platforms(&self) -> Vec<String> {
        self.manifests
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .map(|p| p.to_platform().to_string())
            .filter(|p| p != "unknown/unknown")
            .collect()
    }
}

fn known(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_MANIFEST_LIST
    )
}

fn known_manifest(media_type: &str) -> bool {
    // Index entries may omit their media type; treat those as manifests.
    media_type.is_empty() || matches!(media_type, OCI_MANIFEST | DOCKER_MANIFEST)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    fn index() -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D1}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D2}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{D3}","size":1,"platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#
        )
    }

    #[test]
    fn selects_platform_from_index() {
        let (view, kind, _) = ManifestView::parse(index().as_bytes(), None).unwrap();
        assert_eq!(kind, Kind::Index);
        let pick = |p: &str| {
            view.select(&p.parse().unwrap())
                .map(|d| d.digest.to_string())
        };
        assert_eq!(pick("linux/amd64").as_deref(), Some(D1));
        assert_eq!(pick("linux/arm64").as_deref(), Some(D2));
        assert_eq!(pick("linux/s390x"), None);
        assert_eq!(view.platforms(), vec!["linux/amd64", "linux/arm64/v8"]);
    }

    #[test]
    fn content_type_and_shape() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{D1}","size":3}},"layers":[{{"mediaType":"l","digest":"{D2}","size":9}}]}}"#
        );
        let (view, kind, mt) = ManifestView::parse(m.as_bytes(), None).unwrap();
        assert_eq!((kind, mt.as_str()), (Kind::Manifest, OCI_MANIFEST));
        assert_eq!(view.blobs().len(), 2);
        let (_, _, mt) = ManifestView::parse(
            m.as_bytes(),
            Some(&format!("{DOCKER_MANIFEST}; charset=utf-8")),
        )
        .unwrap();
        assert_eq!(mt, DOCKER_MANIFEST);
        let err = ManifestView::parse(br#"{"schemaVersion":1,"name":"x"}"#, None).unwrap_err();
        assert!(err.contains("schema 1"), "{err}");
        assert!(ManifestView::parse(b"not json", None).is_err());
        let err = ManifestView::parse(
            br#"{"schemaVersion":2}"#,
            Some("application/vnd.oci.image.manifest.v1+json"),
        )
        .unwrap_err();
        assert!(err.contains("no config"), "{err}");
    }
}
