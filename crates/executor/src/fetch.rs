//! Downloads for `ADD <url>`: an HTTP(S) GET streamed to a file while
//! hashing, with an optional `--checksum` verified before the file appears
//! under its final name.
//!
//! As BuildKit does, the downloaded file is never extracted, gets mode 0600,
//! and takes its modification time from the `Last-Modified` header when
//! there is one. The name a file gets in a destination directory comes from
//! `Content-Disposition`, else the URL path's last element, else
//! `download`. Git URLs are not handled here.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rbuild_cache::{Digest, Hasher};

/// Errors of a download.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Only `http` and `https` URLs can be downloaded.
    #[error("unsupported URL {url:?}: only http and https are supported")]
    Scheme {
        /// The URL.
        url: String,
    },
    /// The request failed (connection, TLS, protocol).
    #[error("download {url}: {message}")]
    Request {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The server answered with an error status.
    #[error("download {url}: HTTP status {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The content does not match `--checksum`.
    #[error("download {url}: checksum mismatch: expected {expected}, got {actual}")]
    Checksum {
        /// The URL.
        url: String,
        /// The digest asked for.
        expected: Digest,
        /// The digest of what was received.
        actual: Digest,
    },
    /// Writing the file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The host path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, FetchError>;

/// A completed download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// sha256 of the content.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// The name for the file in a destination directory.
    pub file_name: String,
    /// `Last-Modified`, if the server sent a valid one.
    pub last_modified: Option<SystemTime>,
}

/// Downloads `url` to `dest_file` (replaced atomically: a temporary file in
/// the same directory is written, synced and renamed). With `checksum`, a
/// mismatch is an error and nothing is left behind.
pub fn download(url: &str, checksum: Option<Digest>, dest_file: &Path) -> Result<Download> {
    let lower = url.to_ascii_lowercase();
    if !lower.starts_with("http://") && !lower.starts_with("https://") {
        return Err(FetchError::Scheme {
            url: url.to_string(),
        });
    }
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(concat!("rbuild/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(300)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let request_err = |e: ureq::Error| FetchError::Request {
        url: url.to_string(),
        message: e.to_string(),
    };
    let response = agent.get(url).call().map_err(request_err)?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(FetchError::Status {
            url: url.to_string(),
            status,
        });
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let last_modified = header("last-modified").and_then(|v| httpdate::parse_http_date(&v).ok());
    let file_name = file_name(url, header("content-disposition").as_deref());

    let dir = dest_file.parent().unwrap_or(Path::new("."));
    let io_err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| FetchError::Io { op, path, source }
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".rbuild-download-")
        .tempfile_in(dir)
        .map_err(io_err("create temporary file in", dir))?;
    let mut hasher = Hasher::new();
    let mut size = 0u64;
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(FetchError::Request {
                    url: url.to_string(),
                    message: e.to_string(),
                })
            }
        };
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .map_err(io_err("write", tmp.path()))?;
        size += n as u64;
    }
    let digest = hasher.finish();
    if let Some(expected) = checksum {
        if expected != digest {
            return Err(FetchError::Checksum {
                url: url.to_string(),
                expected,
                actual: digest,
            });
        }
    }
    let file: &File = tmp.as_file();
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_err("chmod", tmp.path()))?;
    if let Some(t) = last_modified {
        file.set_modified(t)
            .map_err(io_err("set mtime", tmp.path()))?;
    }
    file.sync_all().map_err(io_err("sync", tmp.path()))?;
    tmp.persist(dest_file)
        .map_err(|e| io_err("rename to", dest_file)(e.error))?;
    Ok(Download {
        digest,
        size,
        file_name,
        last_modified,
    })
}

/// The name a downloaded file gets: the `filename` of `Content-Disposition`
/// (its last path element), else the last element of the URL path, else
/// `download`.
///
/// ```
/// use rbuild_executor::fetch::file_name;
/// assert_eq!(file_name("https://h/x/tool.tar.gz?sig=1", None), "tool.tar.gz");
/// assert_eq!(file_name("https://h/", None), "download");
/// assert_eq!(file_name("https://h/dir/", None), "dir");
/// assert_eq!(file_name("https://h/get", Some("attachment; filename=\"a/b.bin\"")), "b.bin");
/// ```
pub fn file_name(url: &str, content_disposition: Option<&str>) -> String {
    if let Some(cd) = content_disposition {
        for param in cd.split(';').skip(1) {
            let Some((k, v)) = param.split_once('=') else {
                continue;
            };
            if !k.trim().eq_ignore_ascii_case("filename") {
                continue;
            }
            let v = v.trim().trim_matches('"');
            if v.ends_with('/') {
                continue;
            }
            if let Some(base) = v
                .rsplit('/')
                .next()
                .filter(|b| !b.is_empty() && *b != "." && *b != "..")
            {
                return base.to_string();
            }
        }
    }
    let after_scheme = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let path = after_scheme
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .split_once('/')
        .map(|(_, p)| p)
        .unwrap_or("");
    // Go's path.Base: trailing slashes do not count.
    match path.trim_end_matches('/').rsplit('/').next() {
        Some(base) if !base.is_empty() && base != "." && base != ".." => base.to_string(),
        _ => "download".to_string(),
    }
}
