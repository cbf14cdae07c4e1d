//! The HTTP side of the distribution protocol: one [`RegistryClient`] per
//! registry host, which picks the scheme, answers `401` challenges (Basic or
//! the Bearer token flow), and retries transient failures with backoff.
//!
//! What to request (manifests, blobs, uploads) is decided by `pull` and
//! `push`; this module only moves requests and bytes.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ureq::http::{self, Method, Response};
use ureq::tls::{RootCerts, TlsConfig};
use ureq::Body;

use super::auth::{parse_challenge, query_escape, Challenge, Credentials, TokenResponse};
use super::credentials::{normalize_host, DockerConfig};
use super::error::{Error, Result};

/// How often and how patiently to retry a request that failed for a reason
/// that may pass (connection refused or reset, timeouts, HTTP 5xx/429).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts per operation (at least 1).
    pub attempts: u32,
    /// The wait before the first retry; doubled after each one.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
        }
    }
}

/// Settings shared by every registry operation.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Registries (`host[:port]`) that may be reached over plain HTTP, like
    /// dockerd's `--insecure-registry`. Loopback hosts always may.
    pub insecure_registries: Vec<String>,
    /// Retry behaviour for transient failures.
    pub retry: RetryPolicy,
    /// The docker config to read credentials from; `None` means
    /// `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
}

impl ClientOptions {
    /// Loads the docker config these options name.
    pub fn load_docker_config(&self) -> Result<DockerConfig> {
        match &self.docker_config {
            Some(p) => DockerConfig::load(p),
            None => DockerConfig::load_default(),
        }
    }
}

/// A request body that can be sent again on retry.
#[derive(Clone, Copy)]
pub(crate) enum Payload<'a> {
    /// No body (GET, HEAD).
    None,
    /// A small in-memory body (manifests, empty POSTs).
    Bytes(&'a [u8]),
    /// A blob file, reopened and streamed on each attempt.
    File(&'a Path),
}

/// What the client currently sends as `Authorization`, and the token scopes
/// it has been asked for so far.
#[derive(Default)]
struct AuthState {
    header: Option<String>,
    scopes: BTreeSet<String>,
}

/// A connection to one registry host.
pub struct RegistryClient {
    registry: String,
    base_url: String,
    agent: ureq::Agent,
    credentials: Option<Credentials>,
    retry: RetryPolicy,
    auth: Mutex<AuthState>,
}

impl RegistryClient {
    /// A client for `registry` (`docker.io`, `ghcr.io`, `127.0.0.1:5000`)
    /// using the credentials the docker config holds for it.
    pub fn new(registry: &str, options: &ClientOptions) -> Result<RegistryClient> {
        let credentials = options.load_docker_config()?.credentials(registry)?;
        RegistryClient::with_credentials(registry, options, credentials)
    }

    /// A client that uses `credentials` (or none) instead of the docker
    /// config: how `login` checks a password before saving it.
    pub fn with_credentials(
        registry: &str,
        options: &ClientOptions,
        credentials: Option<Credentials>,
    ) -> Result<RegistryClient> {
        let host = normalize_host(registry);
        let plain_http = is_loopback(&host)
            || options.insecure_registries.iter().any(|r| {
                normalize_host(r) == host || host_without_port(&host) == normalize_host(r)
            });
        let base_url = if host == "docker.io" {
            "https://registry-1.docker.io".to_string()
        } else if plain_http {
            format!("http://{host}")
        } else {
            format!("https://{host}")
        };
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::PlatformVerifier)
            .build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls)
            .user_agent(concat!("rbuild/", env!("CARGO_PKG_VERSION")))
            // Blob redirects usually point at object storage on another
            // host, which must not see registry credentials.
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(300)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            .timeout_per_write(Some(Duration::from_secs(120)))
            .build();
        Ok(RegistryClient {
            registry: host,
            base_url,
            agent: ureq::Agent::new_with_config(config),
            credentials,
            retry: options.retry,
            auth: Mutex::new(AuthState::default()),
        })
    }

    /// The registry host this client talks to.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Checks that the registry answers the API base (`GET /v2/`) with the
    /// configured credentials, going through the token flow if it asks for
    /// one. This is what `login` verifies.
    pub fn ping(&self) -> Result<()> {
        let resp = self.send(Method::GET, "/v2/", &[], Payload::None, "GET /v2/")?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            status => Err(self.status_error(resp, "GET /v2/", status)),
        }
    }

    /// Asks for `scope` (`repository:name:pull,push`) the next time a token
    /// is fetched, so one token covers a whole pull or push.
    pub(crate) fn add_scope(&self, scope: String) {
        self.lock_auth().scopes.insert(scope);
    }

    /// Sends one request with retries for transient failures.
    pub(crate) fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        payload: Payload<'_>,
        what: &str,
    ) -> Result<Response<Body>> {
        self.with_retries(what, || {
            let resp = self.send_once(method.clone(), path, headers, payload, what)?;
            let status = resp.status().as_u16();
            if status >= 500 || status == 429 {
                return Err(self.status_error(resp, what, status));
            }
            Ok(resp)
        })
    }

    /// `GET path` with retries: each attempt that answers `200` is handed to
    /// `read` (which consumes the body; a body that breaks off is retried
    /// as a whole), any other status is an error for `what`.
    pub(crate) fn get<T>(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        what: &str,
        mut read: impl FnMut(Response<Body>) -> Result<T>,
    ) -> Result<T> {
        self.with_retries(what, || {
            let resp = self.send_once(Method::GET, path, headers, Payload::None, what)?;
            match resp.status().as_u16() {
                200 => read(resp),
                status => Err(self.status_error(resp, what, status)),
            }
        })
    }

    /// Runs `op` until it succeeds, fails for good, or the attempts run
    /// out, sleeping with exponential backoff between attempts. The final
    /// transport error reports how many attempts were made.
    pub(crate) fn with_retries<T>(
        &self,
        what: &str,
        mut op: impl FnMut() -> Result<T>,
    ) -> Result<T> {
        let attempts = self.retry.attempts.max(1);
        let mut backoff = self.retry.initial_backoff;
        let mut attempt = 1;
        loop {
            match op() {
                Err(e) if e.is_transient() && attempt < attempts => {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                    attempt += 1;
                }
                Err(Error::Transport {
                    registry, message, ..
                }) => {
                    return Err(Error::Transport {
                        registry,
                        what: what.to_string(),
                        message,
                        attempts: attempt,
                    })
                }
                other => return other,
            }
        }
    }

    /// One HTTP exchange. A `401` with a challenge is answered once
    /// (credentials or a fresh token) and the request re-sent; a second
    /// `401` is an [`Error::Unauthorized`].
    pub(crate) fn send_once(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        payload: Payload<'_>,
        what: &str,
    ) -> Result<Response<Body>> {
        let url = self.url(path);
        let mut answered_challenge = false;
        loop {
            let auth_header = if url.starts_with(&self.base_url) {
                self.lock_auth().header.clone()
            } else {
                // Never hand registry credentials to another host (a blob
                // redirect target, an absolute upload Location elsewhere).
                None
            };
            let resp = self.exchange(
                &method,
                &url,
                headers,
                auth_header.as_deref(),
                payload,
                what,
            )?;
            if resp.status().as_u16() != 401 || answered_challenge {
                if resp.status().as_u16() == 401 {
                    let message = self.error_message(resp);
                    return Err(self.unauthorized(message));
                }
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get_all(http::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(parse_challenge);
            let message = self.error_message(resp);
            match challenge {
                Some(challenge) => self.answer(challenge)?,
                None => return Err(self.unauthorized(message)),
            }
            answered_challenge = true;
        }
    }

    fn exchange(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&str, &str)],
        auth: Option<&str>,
        payload: Payload<'_>,
        what: &str,
    ) -> Result<Response<Body>> {
        let mut builder = http::Request::builder().method(method.clone()).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        if let Some(a) = auth {
            builder = builder.header(http::header::AUTHORIZATION, a);
        }
        let result = match payload {
            Payload::None => builder.body(()).map(|r| self.agent.run(r)),
            Payload::Bytes(b) => builder.body(b).map(|r| self.agent.run(r)),
            Payload::File(p) => {
                let f = File::open(p).map_err(|source| Error::Io {
                    context: format!("opening {}", p.display()),
                    source,
                })?;
                builder.body(f).map(|r| self.agent.run(r))
            }
        };
        let result = result.map_err(|e| Error::Status {
            registry: self.registry.clone(),
            what: what.to_string(),
            status: 0,
            message: format!("cannot build request: {e}"),
        })?;
        result.map_err(|e| {
            // A name that does not resolve will not resolve on a retry a
            // second later: fail at once rather than after the backoff.
            // std reports getaddrinfo failures as I/O errors with this text.
            let unresolved = match &e {
                ureq::Error::HostNotFound => true,
                ureq::Error::Io(io) => io
                    .to_string()
                    .starts_with("failed to lookup address information"),
                _ => false,
            };
            if unresolved {
                Error::UnknownHost {
                    registry: self.registry.clone(),
                    url: url.to_string(),
                    message: e.to_string(),
                }
            } else {
                self.transport(what, e)
            }
        })
    }

    /// Answers a challenge by updating the `Authorization` header to send.
    fn answer(&self, challenge: Challenge) -> Result<()> {
        match challenge {
            Challenge::Basic => {
                let Some(creds) = &self.credentials else {
                    return Err(self.unauthorized(
                        "authentication required and no credentials are configured (run `rbuild login`)"
                            .into(),
                    ));
                };
                self.lock_auth().header = Some(creds.basic_header());
                Ok(())
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scopes: Vec<String> = {
                    let mut st = self.lock_auth();
                    if let Some(s) = scope {
                        st.scopes.insert(s);
                    }
                    st.scopes.iter().cloned().collect()
                };
                let token = self.fetch_token(&realm, service.as_deref(), &scopes)?;
                self.lock_auth().header = Some(format!("Bearer {token}"));
                Ok(())
            }
        }
    }

    /// The distribution token flow: `GET realm?service=..&scope=..` with
    /// Basic credentials (or anonymously), or the OAuth2 refresh-token `POST`
    /// when the credentials are an identity token.
    fn fetch_token(&self, realm: &str, service: Option<&str>, scopes: &[String]) -> Result<String> {
        let what = format!("token from {realm}");
        let mut resp = self.with_retries(&what, || {
            let resp = match self
                .credentials
                .as_ref()
                .and_then(|c| c.identity_token.as_ref())
            {
                Some(refresh) => {
                    let mut form = format!(
                        "grant_type=refresh_token&client_id=rbuild&refresh_token={}",
                        query_escape(refresh)
                    );
                    if let Some(s) = service {
                        form.push_str(&format!("&service={}", query_escape(s)));
                    }
                    if !scopes.is_empty() {
                        form.push_str(&format!("&scope={}", query_escape(&scopes.join(" "))));
                    }
                    self.exchange(
                        &Method::POST,
                        realm,
                        &[("Content-Type", "application/x-www-form-urlencoded")],
                        None,
                        Payload::Bytes(form.as_bytes()),
                        &what,
                    )?
                }
                None => {
                    let mut params = Vec::new();
                    if let Some(s) = service {
                        params.push(format!("service={}", query_escape(s)));
                    }
                    for s in scopes {
                        params.push(format!("scope={}", query_escape(s)));
                    }
                    let sep = if realm.contains('?') { '&' } else { '?' };
                    let url = if params.is_empty() {
                        realm.to_string()
                    } else {
                        format!("{realm}{sep}{}", params.join("&"))
                    };
                    let basic = self
                        .credentials
                        .as_ref()
                        .filter(|c| !c.username.is_empty() || !c.password.is_empty())
                        .map(Credentials::basic_header);
                    self.exchange(
                        &Method::GET,
                        &url,
                        &[],
                        basic.as_deref(),
                        Payload::None,
                        &what,
                    )?
                }
            };
            let status = resp.status().as_u16();
            if status >= 500 || status == 429 {
                return Err(self.status_error(resp, &what, status));
            }
            Ok(resp)
        })?;
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            let message = self.error_message(resp);
            return Err(self.unauthorized(format!(
                "token server {realm} refused the credentials: {message}"
            )));
        }
        if !(200..300).contains(&status) {
            return Err(self.status_error(resp, &what, status));
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| self.transport(&what, e))?;
        serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(TokenResponse::into_token)
            .ok_or_else(|| self.unauthorized(format!("token server {realm} sent no token")))
    }

    /// The absolute URL for an API path or an upload `Location` (absolute,
    /// or relative to the registry).
    pub(crate) fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else if path.starts_with('/') {
            format!("{}{path}", self.base_url)
        } else {
            format!("{}/{path}", self.base_url)
        }
    }

    pub(crate) fn transport(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Transport {
            registry: self.registry.clone(),
            what: what.to_string(),
            message: e.to_string(),
            attempts: 1,
        }
    }

    fn unauthorized(&self, message: String) -> Error {
        Error::Unauthorized {
            registry: self.registry.clone(),
            message,
        }
    }

    /// An error for an unexpected status, carrying the registry's message.
    pub(crate) fn status_error(&self, resp: Response<Body>, what: &str, status: u16) -> Error {
        let message = self.error_message(resp);
        match status {
            401 => self.unauthorized(message),
            404 => Error::NotFound {
                registry: self.registry.clone(),
                what: what.to_string(),
                message,
            },
            _ => Error::Status {
                registry: self.registry.clone(),
                what: what.to_string(),
                status,
                message,
            },
        }
    }

    /// The `errors[].message` texts of a distribution error body, or the
    /// start of whatever text it sent. Reading it also frees the connection
    /// for reuse.
    fn error_message(&self, mut resp: Response<Body>) -> String {
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_vec()
            .unwrap_or_default();
        #[derive(serde::Deserialize)]
        struct Errors {
            errors: Vec<ErrorEntry>,
        }
        #[derive(serde::Deserialize)]
        struct ErrorEntry {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        if let Ok(errs) = serde_json::from_slice::<Errors>(&body) {
            let parts: Vec<String> = errs
                .errors
                .iter()
                .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                    (false, false) => format!("{}: {}", e.code, e.message),
                    (false, true) => e.code.clone(),
                    _ => e.message.clone(),
                })
                .collect();
            if !parts.is_empty() {
                return parts.join("; ");
            }
        }
        let text = String::from_utf8_lossy(&body);
        let text = text.trim();
        if text.is_empty() {
            resp.status()
                .canonical_reason()
                .unwrap_or("no message")
                .to_string()
        } else {
            text.chars().take(200).collect()
        }
    }

    fn lock_auth(&self) -> std::sync::MutexGuard<'_, AuthState> {
        // A panic while holding the lock cannot leave AuthState half-updated
        // (each field is replaced whole), so a poisoned lock is still usable.
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether a registry host is this machine (plain HTTP allowed, as dockerd
/// allows for `127.0.0.0/8` and `localhost`).
fn is_loopback(host: &str) -> bool {
    let h = host_without_port(host);
    h == "localhost"
        || h == "::1"
        || h.parse::<std::net::Ipv4Addr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// `host:port` → `host`, `[::1]:5000` → `::1`.
fn host_without_port(host: &str) -> String {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => {
            h.to_string()
        }
        _ => host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for (h, want) in [
            ("localhost:5000", true),
            ("127.0.0.1:5000", true),
            ("127.1.2.3", true),
            ("[::1]:5000", true),
            ("registry.example.com", false),
            ("10.0.0.1:5000", false),
        ] {
            assert_eq!(is_loopback(h), want, "{h}");
        }
    }

    #[test]
    fn schemes() {
        let opts = ClientOptions {
            insecure_registries: vec!["myreg.local:5000".into()],
            ..ClientOptions::default()
        };
        let c = |r: &str| RegistryClient::with_credentials(r, &opts, None).unwrap();
        assert_eq!(c("docker.io").base_url, "https://registry-1.docker.io");
        assert_eq!(c("127.0.0.1:5000").base_url, "http://127.0.0.1:5000");
        assert_eq!(c("myreg.local:5000").base_url, "http://myreg.local:5000");
        assert_eq!(c("ghcr.io").base_url, "https://ghcr.io");
        let client = c("127.0.0.1:5000");
        assert_eq!(
            client.url("/v2/a/blobs/uploads/x?y=1"),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/x?y=1"
        );
        assert_eq!(client.url("http://other/x"), "http://other/x");
    }
}
