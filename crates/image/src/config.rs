//! The image configuration ([`ImageConfig`]): the OCI image-spec config plus
//! the fields of Docker's image format that the OCI spec lacks
//! (`Healthcheck`, `OnBuild`, `Shell`, `ArgsEscaped`), which BuildKit also
//! writes into OCI configs and which child builds depend on.
//!
//! Field names are exactly those of the JSON formats (lower-case at the top
//! level, Docker's CamelCase inside `config`); fields are serialised in a
//! fixed order, maps are sorted and empty optional fields are omitted, so
//! equal configs encode to equal bytes (and equal digests).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use rbuild_cache::Digest;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An image configuration (OCI `application/vnd.oci.image.config.v1+json`,
/// also Docker's `application/vnd.docker.container.image.v1+json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Creation time, RFC 3339 (see [`rfc3339`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Author (`MAINTAINER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// CPU architecture (Go's `GOARCH` names: `amd64`, `arm64`).
    #[serde(default)]
    pub architecture: String,
    /// CPU variant (`v8` for arm64, `v7` for arm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Operating system (`linux`).
    #[serde(default)]
    pub os: String,
    /// OS version (Windows images).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// OS features (Windows images).
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    /// The runtime defaults of containers of this image.
    #[serde(default, skip_serializing_if = "ContainerConfig::is_empty")]
    pub config: ContainerConfig,
    /// The layers' diffIDs.
    #[serde(default)]
    pub rootfs: RootFs,
    /// One entry per Dockerfile step, layer-producing or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

/// The `config` object: defaults for containers run from the image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `USER`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// `EXPOSE`: `"80/tcp"` keys.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub exposed_ports: BTreeMap<String, EmptyObject>,
    /// `ENV`, as `KEY=value` strings in definition order.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub env: Vec<String>,
    /// `ENTRYPOINT`; `Some(vec![])` (explicitly empty) differs from unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`; `Some(vec![])` differs from unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `VOLUME`.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub volumes: BTreeMap<String, EmptyObject>,
    /// `WORKDIR`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    /// `LABEL`.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub labels: BTreeMap<String, String>,
    /// `STOPSIGNAL`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    /// Whether `Cmd`/`Entrypoint` are already escaped for Windows; Docker
    /// sets it for shell-form commands.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub args_escaped: bool,
    /// `HEALTHCHECK` (Docker extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// `ONBUILD` triggers, as written (Docker extension).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub on_build: Vec<String>,
    /// `SHELL` (Docker extension).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub shell: Vec<String>,
}

impl ContainerConfig {
    /// True when nothing is set (the object is then omitted).
    pub fn is_empty(&self) -> bool {
        *self == ContainerConfig::default()
    }

    /// The value of `name` in [`ContainerConfig::env`] (the last definition).
    pub fn env_get(&self, name: &str) -> Option<&str> {
        self.env.iter().rev().find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }

    /// Sets `name=value` in [`ContainerConfig::env`], replacing an earlier
    /// definition in place (Docker keeps the original position).
    pub fn env_set(&mut self, name: &str, value: &str) {
        let entry = format!("{name}={value}");
        match self
            .env
            .iter_mut()
            .find(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k) == name)
        {
            Some(slot) => *slot = entry,
            None => self.env.push(entry),
        }
    }
}

/// `HEALTHCHECK` settings. Durations are nanoseconds, as Docker stores
/// them; zero means "inherit the default".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub test: Vec<String>,
    /// `--interval`, ns.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: i64,
    /// `--timeout`, ns.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
    /// `--start-period`, ns.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: i64,
    /// `--start-interval`, ns.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: i64,
    /// `--retries`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: i64,
}

/// The `rootfs` object: the ordered diffIDs of the image's layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `"layers"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// sha256 of each uncompressed layer tar, lowest first.
    #[serde(default, deserialize_with = "null_default")]
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> RootFs {
        RootFs {
            kind: "layers".to_string(),
            diff_ids: Vec::new(),
        }
    }
}

/// One history entry (one Dockerfile step).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// When the step ran, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction, as BuildKit writes it (`COPY a /b # buildkit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Author at that step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Free-form comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True when the step produced no layer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// The `{}` values of `ExposedPorts` and `Volumes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EmptyObject;

impl Serialize for EmptyObject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}

impl<'de> Deserialize<'de> for EmptyObject {
    /// Accepts any value: only the key matters (some writers put `null`).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<EmptyObject, D::Error> {
        IgnoredAny::deserialize(d)?;
        Ok(EmptyObject)
    }
}

/// Go writes nil slices and maps as `null`; read them as empty.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl ImageConfig {
    /// An empty config for `os`/`architecture` (see [`host_platform`]).
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> ImageConfig {
        ImageConfig {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
            ..ImageConfig::default()
        }
    }

    /// Parses a config blob.
    pub fn from_json(data: &[u8]) -> serde_json::Result<ImageConfig> {
        serde_json::from_slice(data)
    }

    /// The canonical encoding: compact JSON, fixed field order, sorted maps.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an ImageConfig always serialises (string keys only)")
    }

    /// Number of history entries that produced a layer; for a consistent
    /// image it equals the number of layers (when history is present).
    pub fn non_empty_history(&self) -> usize {
        self.history.iter().filter(|h| !h.empty_layer).count()
    }
}

/// The host platform in OCI terms (`os`, `architecture`, `variant`), as
/// Go names them.
pub fn host_platform() -> (&'static str, &'static str, Option<&'static str>) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    let variant = match arch {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    };
    ("linux", arch, variant)
}

/// Formats a time as RFC 3339 in UTC the way Go's `time.RFC3339Nano` does
/// (`2024-01-02T03:04:05Z`, fractional seconds without trailing zeros).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// let t = UNIX_EPOCH + Duration::new(1_700_000_000, 120_000_000);
/// assert_eq!(rbuild_image::config::rfc3339(t), "2023-11-14T22:13:20.12Z");
/// ```
pub fn rfc3339(t: SystemTime) -> String {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (s, n) = (d.as_secs() as i64, d.subsec_nanos());
            if n == 0 {
                (-s, 0)
            } else {
                (-s - 1, 1_000_000_000 - n)
            }
        }
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> ImageConfig {
        let mut c = ImageConfig::new("linux", "amd64", None);
        c.created = Some("2024-01-01T00:00:00Z".into());
        c.author = Some("me".into());
        c.config.env = vec!["PATH=/usr/bin".into()];
        c.config.cmd = Some(vec!["sh".into()]);
        c.config.exposed_ports.insert("80/tcp".into(), EmptyObject);
        c.config.labels.insert("b".into(), "2".into());
        c.config.labels.insert("a".into(), "1".into());
        c.config.healthcheck = Some(Healthcheck {
            test: vec!["CMD-SHELL".into(), "true".into()],
            interval: 30_000_000_000,
            retries: 3,
            ..Healthcheck::default()
        });
        c.config.on_build = vec!["RUN echo hi".into()];
        c.config.shell = vec!["/bin/bash".into(), "-c".into()];
        c.config.stop_signal = "SIGTERM".into();
        c.rootfs.diff_ids = vec![Digest::of_bytes(b"layer")];
        c.history = vec![History {
            created_by: Some("COPY . / # buildkit".into()),
            ..History::default()
        }];
        c
    }

    #[test]
    fn exact_json_field_names_and_order() {
        let json = String::from_utf8(sample().to_json()).unwrap();
        let expected = concat!(
            r#"{"created":"2024-01-01T00:00:00Z","author":"me","architecture":"amd64","os":"linux","#,
            r#""config":{"ExposedPorts":{"80/tcp":{}},"Env":["PATH=/usr/bin"],"Cmd":["sh"],"#,
            r#""Labels":{"a":"1","b":"2"},"StopSignal":"SIGTERM","#,
            r#""Healthcheck":{"Test":["CMD-SHELL","true"],"Interval":30000000000,"Retries":3},"#,
            r#""OnBuild":["RUN echo hi"],"Shell":["/bin/bash","-c"]},"#,
            r#""rootfs":{"type":"layers","diff_ids":["sha256:"#
        );
        assert!(json.starts_with(expected), "{json}");
        assert!(
            json.ends_with(r#""]},"history":[{"created_by":"COPY . / # buildkit"}]}"#),
            "{json}"
        );
        let back = ImageConfig::from_json(json.as_bytes()).unwrap();
        assert_eq!(back, sample());
        assert_eq!(back.to_json(), sample().to_json());
    }

    #[test]
    fn reads_docker_output_with_nulls_and_unknown_fields() {
        let json = br#"{"architecture":"amd64","config":{"Hostname":"","Env":null,"Cmd":["/bin/sh"],
            "Entrypoint":null,"OnBuild":null,"Labels":null,"ExposedPorts":{"53/udp":null},
            "Healthcheck":{"Test":["NONE"]}},"container":"abc","created":"2023-05-19T20:19:21.398Z",
            "docker_version":"20.10.23","history":[{"created":"2023-05-19T20:19:21Z","created_by":"/bin/sh","empty_layer":true}],
            "os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]}}"#;
        let c = ImageConfig::from_json(json).unwrap();
        assert_eq!(c.config.cmd, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(c.config.entrypoint, None);
        assert!(c.config.env.is_empty());
        assert!(c.config.exposed_ports.contains_key("53/udp"));
        assert_eq!(c.config.healthcheck.as_ref().unwrap().test, vec!["NONE"]);
        assert!(c.history[0].empty_layer);
        assert_eq!(c.non_empty_history(), 0);
        assert_eq!(c.rootfs.diff_ids.len(), 1);
    }

    #[test]
    fn empty_cmd_is_kept_distinct_from_unset() {
        let mut c = ImageConfig::new("linux", "amd64", None);
        c.config.cmd = Some(vec![]);
        let json = String::from_utf8(c.to_json()).unwrap();
        assert!(json.contains(r#""config":{"Cmd":[]}"#), "{json}");
        assert_eq!(
            ImageConfig::from_json(json.as_bytes()).unwrap().config.cmd,
            Some(vec![])
        );
    }

    #[test]
    fn env_helpers_replace_in_place() {
        let mut c = ContainerConfig::default();
        c.env_set("A", "1");
        c.env_set("B", "2");
        c.env_set("A", "3");
        assert_eq!(c.env, vec!["A=3", "B=2"]);
        assert_eq!(c.env_get("A"), Some("3"));
        assert_eq!(c.env_get("C"), None);
    }

    #[test]
    fn rfc3339_matches_go() {
        let t = |s: i64, n: u32| {
            if s >= 0 {
                UNIX_EPOCH + Duration::new(s as u64, n)
            } else {
                UNIX_EPOCH - Duration::new((-s) as u64, 0) + Duration::new(0, n)
            }
        };
        assert_eq!(rfc3339(t(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(t(1_704_067_200, 0)), "2024-01-01T00:00:00Z");
        assert_eq!(rfc3339(t(951_782_400, 0)), "2000-02-29T00:00:00Z");
        assert_eq!(
            rfc3339(t(1_700_000_000, 1)),
            "2023-11-14T22:13:20.000000001Z"
        );
        assert_eq!(rfc3339(t(-1, 500_000_000)), "1969-12-31T23:59:59.5Z");
        assert_eq!(rfc3339(t(253_402_300_799, 0)), "9999-12-31T23:59:59Z");
    }
}
