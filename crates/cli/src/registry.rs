//! `rbuild login`, `logout`, `pull` and `push`: flag parsing and output for
//! the registry operations of `rbuild_image::registry`.

use std::io::{self, BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};
use clap::Args;
use rbuild_image::registry::{self, ClientOptions, Credentials, Platform};
use rbuild_image::{Reference, Store};

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
