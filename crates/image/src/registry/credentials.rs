//! Docker's credential configuration: `$DOCKER_CONFIG/config.json` (default
//! `~/.docker/config.json`), its `auths` entries, and the
//! `docker-credential-<name>` helpers named by `credHelpers` / `credsStore`.
//!
//! The file is shared with docker, podman, buildah and skopeo, so rbuild keeps
//! every key it does not understand and rewrites it atomically with mode 0600.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{Map, Value};

use super::auth::Credentials;
use super::error::{Error, Result};

/// The key Docker uses for Docker Hub credentials (a historical URL, kept by
/// every tool for compatibility).
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// A loaded docker `config.json`.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    path: PathBuf,
    doc: Map<String, Value>,
}

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".docker").join("config.json"))
    }

    /// Loads the config at the default path (an empty config when neither
    /// `DOCKER_CONFIG` nor `HOME` is set, or the file does not exist).
    pub fn load_default() -> Result<DockerConfig> {
        match DockerConfig::default_path() {
            Some(p) => DockerConfig::load(&p),
            None => Ok(DockerConfig {
                path: PathBuf::from(".docker/config.json"),
                doc: Map::new(),
            }),
        }
    }

    /// Loads `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<DockerConfig> {
        let doc = match fs::read(path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Map::new(),
            Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(map)) => map,
                Ok(_) => return Err(config_err(path, "not a JSON object")),
                Err(e) => return Err(config_err(path, format!("invalid JSON: {e}"))),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Map::new(),
            Err(e) => return Err(config_err(path, e)),
        };
        Ok(DockerConfig {
            path: path.to_path_buf(),
            doc,
        })
    }

    /// The file this config is read from and saved to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The credentials for `registry` (a host such as `docker.io` or
    /// `127.0.0.1:5000`), from its credential helper if one is configured,
    /// else from `auths`. `None` when there are none.
    pub fn credentials(&self, registry: &str) -> Result<Option<Credentials>> {
        if let Some(helper) = self.helper_for(registry) {
            return helper_get(&helper, &server_url(registry));
        }
        let Some((_, entry)) = self.auth_entry(registry) else {
            return Ok(None);
        };
        let field = |name: &str| entry.get(name).and_then(Value::as_str).unwrap_or("");
        let mut creds = if !field("auth").is_empty() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(field("auth").trim())
                .map_err(|e| {
                    config_err(
                        &self.path,
                        format!("auths.{registry}.auth: bad base64: {e}"),
                    )
                })?;
            let raw = String::from_utf8(raw)
                .map_err(|_| config_err(&self.path, format!("auths.{registry}.auth: not UTF-8")))?;
            let (user, pass) = raw.split_once(':').ok_or_else(|| {
                config_err(
                    &self.path,
                    format!("auths.{registry}.auth: not base64 of user:password"),
                )
            })?;
            Credentials::new(user, pass)
        } else {
            Credentials::new(field("username"), field("password"))
        };
        if !field("identitytoken").is_empty() {
            creds.identity_token = Some(field("identitytoken").to_string());
        }
        if creds.username.is_empty() && creds.password.is_empty() && creds.identity_token.is_none()
        {
            return Ok(None);
        }
        Ok(Some(creds))
    }

    /// Stores credentials for `registry` (in its helper when one is
    /// configured, else in `auths`) and saves the file.
    pub fn store_credentials(&mut self, registry: &str, creds: &Credentials) -> Result<()> {
        if let Some(helper) = self.helper_for(registry) {
            let input = serde_json::json!({
                "ServerURL": server_url(registry),
                "Username": creds.username,
                "Secret": creds.password,
            });
            run_helper(&helper, "store", input.to_string().as_bytes())?;
            // Docker leaves an empty `auths` entry so `docker info` can list
            // the registry; keep its shape without any secret in it.
            self.remove_auth_entries(registry);
            self.auths_mut()
                .insert(auth_key(registry), Value::Object(Map::new()));
        } else {
            let auth = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", creds.username, creds.password));
            self.remove_auth_entries(registry);
            let mut entry = Map::new();
            entry.insert("auth".into(), Value::String(auth));
            self.auths_mut()
                .insert(auth_key(registry), Value::Object(entry));
        }
        self.save()
    }

    /// Removes the credentials for `registry` from its helper and from
    /// `auths`, then saves. Returns whether anything was removed.
    pub fn erase_credentials(&mut self, registry: &str) -> Result<bool> {
        let mut removed = false;
        if let Some(helper) = self.helper_for(registry) {
            removed |= run_helper(&helper, "erase", server_url(registry).as_bytes()).is_ok();
        }
        removed |= self.remove_auth_entries(registry);
        if removed {
            self.save()?;
        }
        Ok(removed)
    }

    /// Writes the config atomically (temp file, fsync, rename) with mode
    /// 0600, creating its directory (0700) when needed.
    pub fn save(&self) -> Result<()> {
        // Write through a symlinked config.json (dotfile managers) rather than
        // replacing the link.
        let target = fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| config_err(&dir, e))?;
        }
        let mut bytes = serde_json::to_vec_pretty(&Value::Object(self.doc.clone()))
            .map_err(|e| config_err(&self.path, e))?;
        bytes.push(b'\n');
        let tmp = dir.join(format!(".config.json.tmp-{}", std::process::id()));
        let write = || -> io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            // The mode passed to open is masked by the umask and ignored for
            // an existing file; set it explicitly.
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &target)?;
            fs::File::open(&dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            config_err(&target, e)
        })
    }

    fn helper_for(&self, registry: &str) -> Option<String> {
        let host = normalize_host(registry);
        if let Some(Value::Object(helpers)) = self.doc.get("credHelpers") {
            for (key, value) in helpers {
                if normalize_host(key) == host {
                    if let Some(name) = value.as_str().filter(|s| !s.is_empty()) {
                        return Some(name.to_string());
                    }
                }
            }
        }
        self.doc
            .get("credsStore")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    fn auth_entry(&self, registry: &str) -> Option<(&String, &Map<String, Value>)> {
        let host = normalize_host(registry);
        let Some(Value::Object(auths)) = self.doc.get("auths") else {
            return None;
        };
        // An exact key wins over one that only matches after normalisation.
        let exact = auth_key(registry);
        if let Some((k, Value::Object(v))) = auths.get_key_value(&exact) {
            return Some((k, v));
        }
        auths.iter().find_map(|(k, v)| match v {
            Value::Object(v) if normalize_host(k) == host => Some((k, v)),
            _ => None,
        })
    }

    fn auths_mut(&mut self) -> &mut Map<String, Value> {
        let auths = self
            .doc
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            *auths = Value::Object(Map::new());
        }
        match auths {
            Value::Object(m) => m,
            _ => unreachable!("auths was just made an object"),
        }
    }

    fn remove_auth_entries(&mut self, registry: &str) -> bool {
        let host = normalize_host(registry);
        let Some(Value::Object(auths)) = self.doc.get_mut("auths") else {
            return false;
        };
        let before = auths.len();
        auths.retain(|k, _| normalize_host(k) != host);
        auths.len() != before
    }
}

/// The `auths` key rbuild writes for a registry, as docker login does.
fn auth_key(registry: &str) -> String {
    if is_docker_hub(registry) {
        DOCKER_HUB_KEY.to_string()
    } else {
        normalize_host(registry)
    }
}

/// The server URL handed to credential helpers.
fn server_url(registry: &str) -> String {
    auth_key(registry)
}

fn is_docker_hub(registry: &str) -> bool {
    matches!(
        normalize_host(registry).as_str(),
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

/// Reduces an `auths` key or registry name to a bare host[:port]
/// (`https://index.docker.io/v1/` → `docker.io`), as docker's
/// `ConvertToHostname` does, so keys written by other tools still match.
pub(crate) fn normalize_host(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        _ => host,
    }
}

fn helper_get(helper: &str, server: &str) -> Result<Option<Credentials>> {
    let out = match run_helper(helper, "get", server.as_bytes()) {
        Ok(out) => out,
        // Helpers report a missing entry as a failure with this text.
        Err(Error::CredentialHelper { message, .. })
            if message.contains("credentials not found") =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct HelperCreds {
        #[serde(default)]
        username: String,
        #[serde(default)]
        secret: String,
    }
    let parsed: HelperCreds =
        serde_json::from_slice(&out).map_err(|e| Error::CredentialHelper {
            helper: helper.to_string(),
            message: format!("invalid JSON answer: {e}"),
        })?;
    if parsed.username.is_empty() && parsed.secret.is_empty() {
        return Ok(None);
    }
    // `<token>` is the helpers' marker for an identity (refresh) token.
    if parsed.username == "<token>" {
        return Ok(Some(Credentials {
            username: String::new(),
            password: String::new(),
            identity_token: Some(parsed.secret),
        }));
    }
    Ok(Some(Credentials::new(parsed.username, parsed.secret)))
}

fn run_helper(helper: &str, action: &str, input: &[u8]) -> Result<Vec<u8>> {
    let program = format!("docker-credential-{helper}");
    let err = |message: String| Error::CredentialHelper {
        helper: helper.to_string(),
        message,
    };
    let mut child = Command::new(&program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .map_err(|e| err(format!("writing to {program}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("waiting for {program}: {e}")))?;
    if !out.status.success() {
        let mut msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !stderr.trim().is_empty() {
            if !msg.is_empty() {
                msg.push_str("; ");
            }
            msg.push_str(stderr.trim());
        }
        return Err(err(format!("{action} failed ({}): {msg}", out.status)));
    }
    Ok(out.stdout)
}

fn config_err(path: &Path, message: impl ToString) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("config.json");
        fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn normalises_hosts() {
        for (k, want) in [
            ("https://index.docker.io/v1/", "docker.io"),
            ("docker.io", "docker.io"),
            ("http://127.0.0.1:5000", "127.0.0.1:5000"),
            ("https://Registry.Example.com/v2/", "registry.example.com"),
            ("localhost:5000", "localhost:5000"),
        ] {
            assert_eq!(normalize_host(k), want, "{k}");
        }
    }

    #[test]
    fn reads_auth_and_identity_token() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpwOng="},
                "http://127.0.0.1:5000/v2/":{"username":"a","password":"b"},
                "r.example":{"auth":"dTpw","identitytoken":"tok"}}}"#,
        );
        let cfg = DockerConfig::load(&p).unwrap();
        assert_eq!(
            cfg.credentials("docker.io").unwrap(),
            Some(Credentials::new("u", "p:x"))
        );
        assert_eq!(
            cfg.credentials("127.0.0.1:5000").unwrap(),
            Some(Credentials::new("a", "b"))
        );
        let t = cfg.credentials("r.example").unwrap().unwrap();
        assert_eq!(t.identity_token.as_deref(), Some("tok"));
        assert_eq!(cfg.credentials("other:1").unwrap(), None);
    }

    #[test]
    fn store_preserves_other_keys_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            r#"{"psFormat":"table","auths":{"http://h:1":{"auth":"eDp5"},"k:2":{"auth":"eDp5"}}}"#,
        );
        let mut cfg = DockerConfig::load(&p).unwrap();
        cfg.store_credentials("h:1", &Credentials::new("u", "p"))
            .unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["psFormat"], "table");
        assert_eq!(v["auths"]["h:1"]["auth"], "dTpw");
        assert!(v["auths"].get("http://h:1").is_none());
        assert_eq!(v["auths"]["k:2"]["auth"], "eDp5");

        let mut cfg = DockerConfig::load(&p).unwrap();
        assert!(cfg.erase_credentials("h:1").unwrap());
        assert!(!cfg.erase_credentials("h:1").unwrap());
        let cfg = DockerConfig::load(&p).unwrap();
        assert_eq!(cfg.credentials("h:1").unwrap(), None);
        assert!(cfg.credentials("k:2").unwrap().is_some());
    }
}
