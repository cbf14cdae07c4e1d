//! The Bearer token flow, against a small loopback registry written here that
//! demands tokens the way Docker Hub and distribution's token auth do:
//! `401` with `WWW-Authenticate: Bearer realm,service,scope`, a token
//! endpoint that checks Basic credentials (or hands out anonymous tokens),
//! and API requests that need `Authorization: Bearer <token>`.

mod registry_support;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use rbuild_cache::BlobStore;
use rbuild_image::registry::{login, pull_content, Error, Platform, RegistryClient};

use registry_support::*;

/// What the fake registry saw and how it behaves.
struct TokenRegistry {
    port: u16,
    /// Query strings the token endpoint was called with, and whether Basic
    /// credentials came along.
    token_requests: Arc<Mutex<Vec<(String, bool)>>>,
}

impl TokenRegistry {
    /// Serves `files` (path → (content type, bytes)); tokens need `USER` /
    /// `PASSWORD` unless `anonymous`.
    fn start(files: HashMap<String, (String, Vec<u8>)>, anonymous: bool) -> TokenRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let token_requests = Arc::new(Mutex::new(Vec::new()));
        let seen = token_requests.clone();
        let basic = format!(
            "Basic {}",
            base64_of(format!("{USER}:{PASSWORD}").as_bytes())
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (path, headers) = match read_request(&conn) {
                    Some(r) => r,
                    None => continue,
                };
                let auth = headers.get("authorization").cloned().unwrap_or_default();
                let mut conn = conn;
                if let Some(query) = path.strip_prefix("/token?") {
                    seen.lock()
                        .unwrap()
                        .push((query.to_string(), auth == basic));
                    if anonymous || auth == basic {
                        let scope = query
                            .split('&')
                            .find_map(|kv| kv.strip_prefix("scope="))
                            .unwrap_or("");
                        respond(
                            &mut conn,
                            200,
                            &[],
                            format!(r#"{{"token":"tok-{scope}"}}"#).as_bytes(),
                        );
                    } else {
                        respond(
                            &mut conn,
                            401,
                            &[],
                            br#"{"details":"incorrect username or password"}"#,
                        );
                    }
                    continue;
                }
                let repo = path
                    .strip_prefix("/v2/")
                    .and_then(|p| p.split("/manifests/").next())
                    .and_then(|p| p.split("/blobs/").next())
                    .unwrap_or("");
                let scope = format!("repository:{repo}:pull");
                let want = format!(
                    "Bearer tok-{}",
                    scope.replace(':', "%3A").replace('/', "%2F")
                );
                if auth != want {
                    let challenge = format!(
                        r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake-registry",scope="{scope}""#
                    );
                    respond(
                        &mut conn,
                        401,
                        &[("WWW-Authenticate", &challenge)],
                        br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                    );
                    continue;
                }
                match files.get(&path) {
                    Some((ct, body)) => respond(&mut conn, 200, &[("Content-Type", ct)], body),
                    None => respond(
                        &mut conn,
                        404,
                        &[],
                        br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#,
                    ),
                }
            }
        });
        TokenRegistry {
            port,
            token_requests,
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn read_request(conn: &TcpStream) -> Option<(String, HashMap<String, String>)> {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some((path, headers))
}

fn respond(conn: &mut TcpStream, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
}

/// The files a registry serves for one image of `layout` in `repo:tag`.
fn serve_image(
    layout: &Layout,
    img: &BuiltImage,
    repo: &str,
    tag: &str,
) -> HashMap<String, (String, Vec<u8>)> {
    let blob = |d: &rbuild_cache::Digest| {
        fs::read(layout.path().join("blobs/sha256").join(d.hex())).unwrap()
    };
    let mut files = HashMap::new();
    let manifest = blob(&img.manifest);
    let mt = "application/vnd.oci.image.manifest.v1+json".to_string();
    files.insert(
        format!("/v2/{repo}/manifests/{tag}"),
        (mt.clone(), manifest.clone()),
    );
    files.insert(
        format!("/v2/{repo}/manifests/{}", img.manifest),
        (mt, manifest),
    );
    for d in std::iter::once(&img.config).chain(&img.layers) {
        files.insert(
            format!("/v2/{repo}/blobs/{d}"),
            ("application/octet-stream".to_string(), blob(d)),
        );
    }
    files
}

#[test]
fn bearer_token_flow_with_credentials_anonymous_and_wrong_password() {
    let layout = Layout::new();
    let img = layout.image(&host_arch(), &[("f", noise(5000, 5))]);
    let files = serve_image(&layout, &img, "team/app", "1");

    // With credentials: the token request carries them and the scope.
    let reg = TokenRegistry::start(files.clone(), false);
    let (_cfg, opts) = options_with_login(&reg.host());
    let client = RegistryClient::new(&reg.host(), &opts).unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(store_dir.path()).unwrap();
    let pulled = pull_content(&client, &blobs, "team/app", "1", &Platform::host()).unwrap();
    assert_eq!(pulled.manifest_digest, img.manifest);
    assert_eq!(pulled.fetched_blobs, 2);
    let requests = reg.token_requests.lock().unwrap().clone();
    // One token serves the whole pull.
    assert_eq!(requests.len(), 1, "{requests:?}");
    let (query, had_basic) = &requests[0];
    assert!(*had_basic);
    assert!(query.contains("service=fake-registry"), "{query}");
    assert!(
        query.contains("scope=repository%3Ateam%2Fapp%3Apull"),
        "{query}"
    );

    // Login through the token flow: a wrong password fails at the token
    // endpoint, names the registry, and saves nothing.
    let cfg_dir = tempfile::tempdir().unwrap();
    let login_opts = rbuild_image::registry::ClientOptions {
        docker_config: Some(cfg_dir.path().join("config.json")),
        retry: quick_retries(),
        ..Default::default()
    };
    let err = login(
        &reg.host(),
        &rbuild_image::registry::Credentials::new(USER, "nope"),
        &login_opts,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains(&reg.host()), "{err}");
    assert!(!cfg_dir.path().join("config.json").exists());

    // Anonymous tokens: no credentials configured, none sent.
    let anon_reg = TokenRegistry::start(files, true);
    let (_anon_cfg, anon_opts) = options_anonymous();
    let anon = RegistryClient::new(&anon_reg.host(), &anon_opts).unwrap();
    let store2 = tempfile::tempdir().unwrap();
    let blobs2 = BlobStore::open(store2.path()).unwrap();
    pull_content(&anon, &blobs2, "team/app", "1", &Platform::host()).unwrap();
    let requests = anon_reg.token_requests.lock().unwrap().clone();
    assert!(requests.iter().all(|(_, basic)| !basic), "{requests:?}");
    assert!(!requests.is_empty());
}
