//! Base images for FROM and `--from`: the local store first (unless
//! `--pull`), else the image's registry, with Docker's name normalisation
//! and the stage's platform. Owns only the choice between the two; pulling
//! itself is `rbuild_image::registry`.

use rbuild_image::registry::{self, ClientOptions};
use rbuild_image::{Image, ImageConfig, Reference, Store};

use crate::error::BuildError;
use crate::plan::BaseImage;
use crate::progress::{ProgressEvent, ProgressSink};
use crate::request::{Platform, PullPolicy};

/// How base images are found for one build.
pub(crate) struct BaseImages<'a> {
    /// The local store.
    pub store: &'a Store,
    /// `--pull`: when to ask the registry.
    pub policy: PullPolicy,
    /// Registry client settings (insecure registries, credentials file).
    pub options: ClientOptions,
    /// Where pulls are reported.
    pub progress: &'a dyn ProgressSink,
}

impl BaseImages<'_> {
    /// Finds `name` for `platform`, pulling it when the store has no image
    /// of that name for that platform. `Ok(None)` when the name is neither in
    /// the store nor a valid image reference.
    pub fn resolve(
        &self,
        name: &str,
        platform: &Platform,
        line: usize,
    ) -> Result<Option<BaseImage>, BuildError> {
        // An image ID (`sha256:...`) has no registry to pull from, even
        // with --pull (the reference grammar would read it as repository
        // `sha256` with a tag).
        let reference = if name.starts_with("sha256:") {
            None
        } else {
            Reference::parse(name).ok()
        };
        if self.policy != PullPolicy::Always || reference.is_none() {
            let found = self
                .store
                .resolve(name)
                .map_err(|e| BuildError::Store(e.into()))?;
            // A stored image built for another platform is not used for
            // this one: the registry may have the right variant.
            if let Some(img) = found.filter(|img| config_matches(&img.config, platform)) {
                return Ok(Some(base_image(name, img)));
            }
        }
        let Some(reference) = reference.filter(|_| self.policy != PullPolicy::Never) else {
            return Ok(None);
        };
        let pull_err = |e: registry::Error| match e {
            // The registry answers, but has no such image: the same as a
            // missing local image.
            registry::Error::NotFound { .. } => BuildError::BaseImageNotFound {
                line,
                image: name.to_string(),
            },
            e => BuildError::Pull {
                line,
                image: name.to_string(),
                source: Box::new(e),
            },
        };
        self.progress.event(ProgressEvent::Pulling {
            image: name,
            platform: &platform.to_string(),
        });
        let img = registry::pull(
            self.store,
            &reference,
            &to_registry(platform),
            &self.options,
        )
        .map_err(pull_err)?;
        self.progress.event(ProgressEvent::Pulled {
            image: name,
            manifest: &img.manifest_digest,
        });
        Ok(Some(base_image(name, img)))
    }
}

fn base_image(name: &str, img: Image) -> BaseImage {
    BaseImage {
        name: name.to_string(),
        manifest_digest: img.manifest_digest,
        layers: img.layers(),
        config: img.config,
    }
}

/// Whether an image config is for `platform`. Configs that do not say
/// (hand-made imports) match any platform; a variant is compared only when
/// both sides name one, as containerd's platform matcher does.
fn config_matches(config: &ImageConfig, platform: &Platform) -> bool {
    if config.architecture.is_empty() || config.os.is_empty() {
        return true;
    }
    let theirs = registry::Platform {
        os: config.os.clone(),
        architecture: config.architecture.clone(),
        variant: config.variant.clone().filter(|v| !v.is_empty()),
    };
    to_registry(platform).matches(&theirs)
}

fn to_registry(p: &Platform) -> registry::Platform {
    registry::Platform {
        os: p.os.clone(),
        architecture: p.architecture.clone(),
        variant: (!p.variant.is_empty()).then(|| p.variant.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(os: &str, arch: &str, variant: Option<&str>) -> ImageConfig {
        ImageConfig {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn image_ids_resolve_in_the_store_even_with_pull() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let img = store
            .put_image(&config("linux", "amd64", None), &[])
            .unwrap();
        store.register(&img.manifest_digest).unwrap();
        let bases = BaseImages {
            store: &store,
            policy: PullPolicy::Always,
            options: ClientOptions::default(),
            progress: &crate::progress::NoProgress,
        };
        let id = img.config_digest.to_string();
        let found = bases
            .resolve(&id, &Platform::parse("linux/amd64").unwrap(), 1)
            .unwrap()
            .expect("found by ID");
        assert_eq!(found.manifest_digest, img.manifest_digest);
    }

    #[test]
    fn never_policy_uses_the_store_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let img = store
            .put_image(&config("linux", "amd64", None), &[])
            .unwrap();
        store
            .tag(&Reference::parse("here:1").unwrap(), &img.manifest_digest)
            .unwrap();
        let bases = BaseImages {
            store: &store,
            policy: PullPolicy::Never,
            options: ClientOptions::default(),
            progress: &crate::progress::NoProgress,
        };
        let amd64 = Platform::parse("linux/amd64").unwrap();
        assert!(bases.resolve("here:1", &amd64, 1).unwrap().is_some());
        // A registry that refuses connections would fail after retries; a
        // quick `None` shows it was never asked.
        assert!(bases
            .resolve("127.0.0.1:9/elsewhere:1", &amd64, 1)
            .unwrap()
            .is_none());
        // Nor for another platform of a stored name.
        let arm = Platform::parse("linux/arm64").unwrap();
        assert!(bases.resolve("here:1", &arm, 1).unwrap().is_none());
    }

    #[test]
    fn stored_images_match_only_their_platform() {
        let p = |s: &str| Platform::parse(s).unwrap();
        assert!(config_matches(
            &config("linux", "amd64", None),
            &p("linux/amd64")
        ));
        assert!(!config_matches(
            &config("linux", "amd64", None),
            &p("linux/arm64")
        ));
        assert!(config_matches(
            &config("linux", "arm64", Some("v8")),
            &p("linux/arm64")
        ));
        assert!(!config_matches(
            &config("linux", "arm", Some("v6")),
            &p("linux/arm/v7")
        ));
        assert!(config_matches(&config("", "", None), &p("linux/s390x")));
    }
}
