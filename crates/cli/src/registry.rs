//! `rbuild login`, `logout`, `pull` and `push`: flag parsing and output for
//! the registry operations of `rbuild_image::registry`; also the registry
//! side of `rbuild build`: `--cache-to`/`--cache-from` specifications and
//! pushing the built image.

use std::io::{self, BufRead, IsTerminal, Write};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use rbuild_image::registry::{self, ClientOptions, Credentials, Platform};
use rbuild_image::{Reference, Store};
use rbuild_solver::{CacheExport, CacheLocation, CacheMode};

use crate::outputs::split_csv;

/// Flags every registry command shares.
#[derive(Debug, Args)]
pub struct RegistryFlags {
    /// Allow plain HTTP to this registry (host[:port]); may be repeated.
    /// Loopback registries always may.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
}

impl RegistryFlags {
    fn options(&self) -> ClientOptions {
        ClientOptions {
            insecure_registries: self.insecure_registries.clone(),
            ..ClientOptions::default()
        }
    }
}

/// `rbuild login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The registry (host[:port]) [default: docker.io]
    pub registry: Option<String>,
    /// Username
    #[arg(short, long)]
    pub username: Option<String>,
    /// Password (prefer --password-stdin: arguments are visible to other users)
    #[arg(short, long, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from standard input
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub flags: RegistryFlags,
}

/// `rbuild logout`.
#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// The registry (host[:port]) [default: docker.io]
    pub registry: Option<String>,
}

/// `rbuild pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image to pull: NAME[:TAG|@DIGEST]
    pub name: String,
    /// Platform to pull from a multi-platform image (os/arch[/variant])
    /// [default: this machine's]
    #[arg(long)]
    pub platform: Option<String>,
    /// Print only the image reference
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub flags: RegistryFlags,
}

/// `rbuild push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// Local image to push: NAME[:TAG] or image ID
    pub image: String,
    /// Where to push it [default: the image's own name]
    pub destination: Option<String>,
    /// Print only the pushed digest
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub flags: RegistryFlags,
}

const DEFAULT_REGISTRY: &str = "docker.io";

/// Checks the credentials with the registry and saves them.
pub fn login(args: &LoginArgs) -> Result<()> {
    let registry = args.registry.as_deref().unwrap_or(DEFAULT_REGISTRY);
    let username = match &args.username {
        Some(u) => u.clone(),
        None => prompt("Username: ", false)?,
    };
    let password = if args.password_stdin {
        let mut line = String::new();
        io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        match &args.password {
            Some(p) => p.clone(),
            None => prompt("Password: ", true)?,
        }
    };
    if username.is_empty() || password.is_empty() {
        bail!("login to {registry}: username and password are required");
    }
    registry::login(
        registry,
        &Credentials::new(username, password),
        &args.flags.options(),
    )?;
    println!("Login Succeeded");
    Ok(())
}

/// Removes saved credentials.
pub fn logout(args: &LogoutArgs) -> Result<()> {
    let registry = args.registry.as_deref().unwrap_or(DEFAULT_REGISTRY);
    if registry::logout(registry, &ClientOptions::default())? {
        println!("Removing login credentials for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(())
}

/// Pulls an image into the store and prints its reference.
pub fn pull(store: &Store, args: &PullArgs) -> Result<()> {
    let reference = Reference::parse(&args.name)?;
    let platform = match &args.platform {
        Some(p) => p.parse::<Platform>()?,
        None => Platform::host(),
    };
    if !args.quiet {
        println!("Pulling {reference} for {platform}");
    }
    let image = registry::pull(store, &reference, &platform, &args.flags.options())?;
    if !args.quiet {
        println!("Digest: {}", image.manifest_digest);
        println!("Image ID: {}", image.config_digest);
    }
    println!("{reference}");
    Ok(())
}

/// Pushes a stored image and prints the pushed digest.
pub fn push(store: &Store, args: &PushArgs) -> Result<()> {
    let image = store
        .resolve(&args.image)?
        .with_context(|| format!("no such image: {}", args.image))?;
    let destination = match &args.destination {
        Some(d) => Reference::parse(d)?,
        None => Reference::parse(&args.image).with_context(|| {
            format!(
                "{} is an image ID: name a destination (rbuild push ID NAME[:TAG])",
                args.image
            )
        })?,
    };
    let report = registry::push(store, &image, &destination, &args.flags.options())?;
    if args.quiet {
        println!("{}", report.digest);
    } else {
        println!(
            "Pushed {destination}: {} uploaded, {} mounted, {} already present",
            report.uploaded, report.mounted, report.existing
        );
        let size = store.blobs().size(&report.digest)?;
        println!(
            "{}: digest: {} size: {size}",
            destination.tag().unwrap_or("<digest>"),
            report.digest
        );
    }
    Ok(())
}

/// Pushes the built image `manifest` under each of `names` (as `build
/// --push` and `-o type=image,push=true` do) and returns one line per name
/// for the progress output: `pushed NAME@DIGEST`.
pub fn push_built(
    store: &Store,
    manifest: &rbuild_cache::Digest,
    names: &[Reference],
    insecure_registries: &[String],
) -> Result<Vec<String>> {
    let options = ClientOptions {
        insecure_registries: insecure_registries.to_vec(),
        ..ClientOptions::default()
    };
    let image = store.image(manifest)?;
    let mut lines = Vec::new();
    for name in names {
        let report = registry::push(store, &image, name, &options)
            .with_context(|| format!("pushing {name}"))?;
        lines.push(format!("pushed {name}@{}", report.digest));
    }
    Ok(lines)
}

/// Attributes of BuildKit's cache exporters and importers that do not change
/// what rbuild writes (it always writes OCI media types, one manifest with
/// the layers as they are stored); accepted so buildx command lines work.
const CACHE_ACCEPTED_IGNORED: &[&str] = &[
    "oci-mediatypes",
    "image-manifest",
    "compression",
    "compression-level",
    "force-compression",
];

/// One `--cache-to` or `--cache-from` value, split into its attributes.
struct CacheSpec {
    kind: String,
    attrs: Vec<(String, String)>,
}

impl CacheSpec {
    fn parse(value: &str) -> Result<CacheSpec> {
        let fields = split_csv(value)?;
        // buildx reads a bare value as a registry reference.
        if fields.len() == 1 && !fields[0].contains('=') {
            return Ok(CacheSpec {
                kind: "registry".into(),
                attrs: vec![("ref".into(), fields[0].clone())],
            });
        }
        let mut kind = None;
        let mut attrs = Vec::new();
        for f in fields {
            let (k, v) = f
                .split_once('=')
                .ok_or_else(|| anyhow!("invalid cache attribute {f:?}: expected key=value"))?;
            let k = k.trim().to_ascii_lowercase();
            if k == "type" {
                kind = Some(v.to_string());
            } else {
                attrs.push((k, v.to_string()));
            }
        }
        let kind = kind.ok_or_else(|| anyhow!("cache {value:?} has no type= attribute"))?;
        Ok(CacheSpec { kind, attrs })
    }

    /// The attribute `key`, if given; an attribute not in `known` (nor
    /// accepted and ignored) is an error.
    fn take(&self, known: &[&str]) -> Result<std::collections::BTreeMap<&str, &str>> {
        let mut out = std::collections::BTreeMap::new();
        for (k, v) in &self.attrs {
            if known.contains(&k.as_str()) {
                out.insert(k.as_str(), v.as_str());
            } else if !CACHE_ACCEPTED_IGNORED.contains(&k.as_str()) {
                bail!("unknown attribute {k:?} for cache type={}", self.kind);
            }
        }
        Ok(out)
    }
}

/// Parses `--cache-to`: `type=registry,ref=REF[,mode=min|max]` or
/// `type=local,dest=DIR[,tag=T][,mode=min|max]`.
pub fn parse_cache_to(value: &str) -> Result<CacheExport> {
    let spec = CacheSpec::parse(value)?;
    let (location, attrs) = match spec.kind.as_str() {
        "registry" => {
            let a = spec.take(&["ref", "mode"])?;
            let reference = a
                .get("ref")
                .ok_or_else(|| anyhow!("--cache-to {value:?}: type=registry needs ref="))?;
            Reference::parse(reference).map_err(|e| anyhow!("--cache-to {value:?}: {e}"))?;
            let loc = CacheLocation::Registry {
                reference: reference.to_string(),
            };
            (loc, a)
        }
        "local" => {
            let a = spec.take(&["dest", "mode", "tag"])?;
            let dest = a
                .get("dest")
                .ok_or_else(|| anyhow!("--cache-to {value:?}: type=local needs dest="))?;
            let loc = CacheLocation::local(dest, a.get("tag").map(|t| t.to_string()));
            (loc, a)
        }
        other => bail!(
            "--cache-to {value:?}: unsupported cache type {other:?} (supported: registry, local)"
        ),
    };
    let mode = match attrs.get("mode").copied() {
        None | Some("min") => CacheMode::Min,
        Some("max") => CacheMode::Max,
        Some(m) => bail!("--cache-to {value:?}: invalid mode {m:?} (expected min or max)"),
    };
    Ok(CacheExport { location, mode })
}

/// Parses `--cache-from`: `type=registry,ref=REF`, a bare `REF`, or
/// `type=local,src=DIR[,tag=T]`.
pub fn parse_cache_from(value: &str) -> Result<CacheLocation> {
    let spec = CacheSpec::parse(value)?;
    match spec.kind.as_str() {
        "registry" => {
            let a = spec.take(&["ref"])?;
            let reference = a
                .get("ref")
                .ok_or_else(|| anyhow!("--cache-from {value:?}: type=registry needs ref="))?;
            Reference::parse(reference).map_err(|e| anyhow!("--cache-from {value:?}: {e}"))?;
            Ok(CacheLocation::Registry {
                reference: reference.to_string(),
            })
        }
        "local" => {
            let a = spec.take(&["src", "tag", "digest"])?;
            if a.contains_key("digest") {
                bail!("--cache-from {value:?}: digest= is not supported; use tag=");
            }
            let src = a
                .get("src")
                .ok_or_else(|| anyhow!("--cache-from {value:?}: type=local needs src="))?;
            Ok(CacheLocation::local(
                src,
                a.get("tag").map(|t| t.to_string()),
            ))
        }
        other => bail!(
            "--cache-from {value:?}: unsupported cache type {other:?} (supported: registry, local)"
        ),
    }
}

/// Asks on the terminal; `secret` turns echo off while the answer is typed.
fn prompt(question: &str, secret: bool) -> Result<String> {
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "{} is required when standard input is not a terminal (use -u, -p or --password-stdin)",
            question.trim_end_matches(": ")
        );
    }
    eprint!("{question}");
    io::stderr().flush().ok();
    let _echo = if secret { EchoOff::new() } else { None };
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading from the terminal")?;
    if secret {
        eprintln!();
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Terminal echo turned off for as long as this lives.
struct EchoOff(libc::termios);

impl EchoOff {
    fn new() -> Option<EchoOff> {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a termios owned here; a
        // failure leaves echo on, which is only less private.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(EchoOff(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `new`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_specs() {
        let e = parse_cache_to("type=registry,ref=127.0.0.1:5000/c:cache,mode=max").unwrap();
        assert_eq!(e.mode, CacheMode::Max);
        assert_eq!(
            e.location,
            CacheLocation::Registry {
                reference: "127.0.0.1:5000/c:cache".into()
            }
        );
        let e = parse_cache_to("type=local,dest=/tmp/c,oci-mediatypes=true").unwrap();
        assert_eq!(e.mode, CacheMode::Min);
        assert_eq!(e.location, CacheLocation::local("/tmp/c", None));
        assert_eq!(
            parse_cache_from("r.example/c:1").unwrap(),
            CacheLocation::Registry {
                reference: "r.example/c:1".into()
            }
        );
        assert_eq!(
            parse_cache_from("type=local,src=/c,tag=t").unwrap(),
            CacheLocation::local("/c", Some("t".into()))
        );
        for (bad, want) in [
            ("type=registry", "needs ref="),
            ("type=local,src=/x", "unknown attribute \"src\""),
            ("type=local,mode=max", "needs dest="),
            ("type=gha", "unsupported cache type"),
            ("type=registry,ref=r/c,mode=all", "invalid mode"),
            ("type=registry,ref=r/c,colour=red", "unknown attribute"),
            ("type=registry,ref=a b", "a b"),
        ] {
            let err = parse_cache_to(bad).unwrap_err().to_string();
            assert!(err.contains(want), "{bad}: {err}");
        }
        assert!(parse_cache_from("type=local,dest=/x")
            .unwrap_err()
            .to_string()
            .contains("unknown attribute"));
    }
}
