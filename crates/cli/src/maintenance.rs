//! Store maintenance commands: `check [--repair]`, `du` and `prune`.
//!
//! The checks and the garbage-collection plan live in the libraries
//! (`Store::check`, `Store::gc_plan`, leases in rbuild-cache); this module
//! adds what spans crates: mounts left under the store by killed builds,
//! the snapshot directories of the executor and `RUN --mount=type=cache`
//! directories, and prints it all.
//!
//! Destructive work (`check --repair`, `prune`) holds the store's `gc` lock
//! exclusively, so it waits for running builds, which hold it shared, and
//! never removes what one of them is writing.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use rbuild_cache::{Digest, FileLock};
use rbuild_image::{GcPlan, Problem, PruneOptions, Store};

use crate::images::human_size;

/// `rbuild check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Remove what is broken or stray (waits for running builds) and say what was removed
    #[arg(long)]
    pub repair: bool,
}

/// `rbuild du`.
#[derive(Debug, Args)]
pub struct DuArgs {
    /// Also list every build cache record
    #[arg(short, long)]
    pub verbose: bool,
}

/// `rbuild prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Also remove untagged images, every cache record and cache mounts
    #[arg(short, long)]
    pub all: bool,
    /// Keep the most recently used build cache up to this size (e.g. 512MB, 10GB)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub keep_storage: Option<u64>,
    /// Filter: until=DURATION removes only cache unused for that long (e.g. 24h)
    #[arg(long = "filter", value_name = "FILTER")]
    pub filters: Vec<String>,
    /// List every removed object
    #[arg(short, long)]
    pub verbose: bool,
}

/// Something wrong outside what `Store::check` sees.
enum Finding {
    Store(Problem),
    /// A mount under the store root with no rbuild running.
    StaleMount(PathBuf),
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Store(p) => p.fmt(f),
            Finding::StaleMount(p) => write!(f, "stale mount {}", p.display()),
        }
    }
}

/// `rbuild check [--repair]`: prints every problem as `damage: ...`
/// (corrupt or broken content) or `leftover: ...` (what a killed process
/// leaves: temp files, stale leases and mounts); without `--repair` fails
/// when there is any, with it removes them and fails only when something
/// could not be removed.
pub fn check(root: &Path, args: &CheckArgs) -> Result<()> {
    let store = if args.repair {
        Store::open_exclusive(root)
            .with_context(|| format!("opening image store {}", root.display()))?
    } else {
        match Store::try_open_exclusive(root)
            .with_context(|| format!("opening image store {}", root.display()))?
        {
            Some(s) => s,
            None => {
                eprintln!(
                    "note: other rbuild processes are using the store: temp files and mounts are not checked"
                );
                crate::open_store(root)?
            }
        }
    };
    let mut findings: Vec<Finding> = Vec::new();
    // With no rbuild running, every mount under the store is a leftover.
    if store.is_exclusive() {
        findings.extend(store_mounts(root).into_iter().map(Finding::StaleMount));
    }
    findings.extend(
        store
            .check()
            .context("checking the store")?
            .into_iter()
            .map(Finding::Store),
    );
    // Damage is what a crash must never cause; leftovers of killed
    // processes are expected and `--repair` clears them.
    for f in &findings {
        let kind = match f {
            Finding::Store(p) if p.is_corruption() => "damage",
            _ => "leftover",
        };
        println!("{kind}: {f}");
    }
    if !args.repair {
        return match findings.len() {
            0 => {
                println!("store {} is sound", root.display());
                Ok(())
            }
            n => bail!("{n} problem(s) found; `rbuild check --repair` removes them"),
        };
    }
    let mut busy = Vec::new();
    for f in &findings {
        if let Finding::StaleMount(m) = f {
            match unmount(m) {
                Ok(()) => println!("removed stale mount {}", m.display()),
                Err(e) => {
                    eprintln!("cannot unmount {}: {e}", m.display());
                    busy.push(m.clone());
                }
            }
        }
    }
    // Never delete a temp dir through a mount that is still there.
    let problems: Vec<Problem> = findings
        .into_iter()
        .filter_map(|f| match f {
            Finding::Store(p) => Some(p),
            Finding::StaleMount(_) => None,
        })
        .filter(|p| match p {
            Problem::StrayTemp(t) => !busy.iter().any(|m| m.starts_with(t)),
            _ => true,
        })
        .collect();
    for line in store.repair(&problems).context("repairing the store")? {
        println!("{line}");
    }
    if !busy.is_empty() {
        bail!("{} mount(s) could not be removed", busy.len());
    }
    Ok(())
}

/// `rbuild du`: disk use by images, build cache, cache mounts and
/// snapshots, with what `prune` (and `prune --all`) would reclaim.
pub fn du(root: &Path, args: &DuArgs) -> Result<()> {
    let store = crate::open_store(root)?;
    let plan = store
        .gc_plan(&PruneOptions::default())
        .context("computing disk usage")?;
    let plan_all = store
        .gc_plan(&PruneOptions {
            all: true,
            ..Default::default()
        })
        .context("computing disk usage")?;
    let index = store.index()?;
    let tagged = index
        .manifests
        .iter()
        .filter(|d| rbuild_image::store::entry_name(d).is_some())
        .count();
    let image_blobs = store.referenced_blobs().unwrap_or_default();
    let size_of = |d: &Digest| store.blobs().size(d).unwrap_or(0);
    let image_bytes: u64 = image_blobs.iter().map(size_of).sum();
    let image_reclaim: u64 = plan_all
        .blobs
        .iter()
        .filter(|(d, _)| image_blobs.contains(d))
        .map(|(_, s)| s)
        .sum();
    let layers: BTreeSet<Digest> = index
        .manifests
        .iter()
        .filter_map(|d| store.image(&d.digest).ok())
        .flat_map(|i| i.manifest.layers.into_iter().map(|l| l.digest))
        .collect();
    let cache_bytes: u64 = plan.all_cache.iter().map(|c| c.size).sum();
    let cache_active = plan.all_cache.iter().filter(|c| c.leased).count();
    let cache_reclaim: u64 = plan.cache.iter().map(|c| c.size).sum();
    let all_blobs = store.blobs().list()?;
    let blob_bytes: u64 = all_blobs.iter().map(size_of).sum();
    let snapshots = snapshot_dirs(root);
    let snap_bytes: u64 = snapshots.iter().map(|s| dir_size(&s.path)).sum();
    let snap_reclaim: u64 = snapshots
        .iter()
        .filter(|s| !s.kept(&plan))
        .map(|s| dir_size(&s.path))
        .sum();
    let mounts = cache_mount_dirs(root);
    let mount_bytes: u64 = mounts.iter().map(|m| dir_size(m)).sum();

    let rows = [
        (
            "Images",
            index.manifests.len().to_string(),
            tagged.to_string(),
            image_bytes,
            image_reclaim,
        ),
        (
            "Layers",
            layers.len().to_string(),
            layers.len().to_string(),
            layers.iter().map(size_of).sum(),
            0,
        ),
        (
            "Build cache",
            plan.all_cache.len().to_string(),
            cache_active.to_string(),
            cache_bytes,
            cache_reclaim,
        ),
        (
            "Cache mounts",
            mounts.len().to_string(),
            "0".to_string(),
            mount_bytes,
            mount_bytes,
        ),
        (
            "Snapshots",
            snapshots.len().to_string(),
            (snapshots.len() - snapshots.iter().filter(|s| !s.kept(&plan)).count()).to_string(),
            snap_bytes,
            snap_reclaim,
        ),
        (
            "Blobs",
            all_blobs.len().to_string(),
            (all_blobs.len() - plan.blobs.len()).to_string(),
            blob_bytes,
            plan.reclaimed(),
        ),
    ];
    println!(
        "{:<14}{:>8}{:>8}{:>12}{:>14}",
        "TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"
    );
    for (kind, total, active, size, reclaim) in rows {
        println!(
            "{kind:<14}{total:>8}{active:>8}{:>12}{:>14}",
            human_size(size),
            human_size(reclaim)
        );
    }
    if args.verbose {
        println!();
        println!("{:<73}{:>10}  {:>8}", "CACHE KEY", "SIZE", "IN USE");
        for c in &plan.all_cache {
            println!(
                "{:<73}{:>10}  {:>8}",
                c.key.to_string(),
                human_size(c.size),
                if c.leased { "yes" } else { "" }
            );
        }
    }
    Ok(())
}

/// `rbuild prune`.
pub fn prune(root: &Path, args: &PruneArgs) -> Result<()> {
    let mut opts = PruneOptions {
        all: args.all,
        keep_storage: args.keep_storage,
        until: None,
    };
    for f in &args.filters {
        match f.split_once('=') {
            Some(("until", d)) => opts.until = Some(parse_duration(d)?),
            _ => bail!("invalid filter {f:?}: only until=DURATION is supported"),
        }
    }
    // Waits for running builds (they hold the gc lock shared).
    let store = Store::open_exclusive(root)
        .with_context(|| format!("opening image store {}", root.display()))?;
    // Mounts left by killed builds would pin snapshots being removed.
    for m in store_mounts(root) {
        unmount(&m).with_context(|| format!("unmounting stale mount {}", m.display()))?;
    }
    let plan = store.gc_plan(&opts).context("planning the prune")?;
    let mut removed = store.prune(&plan).context("pruning the store")?;
    let mut reclaimed = plan.reclaimed();
    for s in snapshot_dirs(root) {
        if s.kept(&plan) {
            continue;
        }
        let size = dir_size(&s.path);
        remove_dir(root, &s.path)?;
        reclaimed += size;
        removed.push(format!("deleted snapshot {}", s.path.display()));
    }
    if args.all {
        for m in cache_mount_dirs(root) {
            // A build would hold the instance's lock; none runs now, but
            // a lock that is busy means someone is using it regardless.
            let lock = PathBuf::from(format!("{}.lock", m.display()));
            let Some(_held) = FileLock::try_exclusive(&lock)? else {
                continue;
            };
            let size = dir_size(&m);
            remove_dir(root, &m)?;
            let _ = fs::remove_file(&lock);
            reclaimed += size;
            removed.push(format!("deleted cache mount {}", m.display()));
        }
    }
    let objects = removed.len();
    if args.verbose {
        for line in &removed {
            println!("{line}");
        }
    }
    println!("Deleted {objects} object(s)");
    println!("Total reclaimed space: {}", human_size(reclaimed));
    Ok(())
}

/// A directory of `<root>/snapshots`.
struct Snapshot {
    path: PathBuf,
    /// The layer diffID (overlay form) or chain ID (native form) it holds.
    id: Digest,
    native: bool,
}

impl Snapshot {
    fn kept(&self, plan: &GcPlan) -> bool {
        if self.native {
            plan.kept_chain_ids.contains(&self.id)
        } else {
            plan.kept_diff_ids.contains(&self.id)
        }
    }
}

/// The executor's snapshot directories: `snapshots/<diffid-hex>` (one
/// unpacked layer each) and `snapshots/native/<chainid-hex>` (flattened
/// chains). Entries that are not named by a digest are not snapshots.
fn snapshot_dirs(root: &Path) -> Vec<Snapshot> {
    let mut out = Vec::new();
    for (dir, native) in [
        (root.join("snapshots"), false),
        (root.join("snapshots").join("native"), true),
    ] {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            if let Some(id) = e
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            {
                out.push(Snapshot {
                    path: e.path(),
                    id,
                    native,
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// `RUN --mount=type=cache` instances: `cache-mounts/<id-hex>/<n>`.
fn cache_mount_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(ids) = fs::read_dir(root.join("cache-mounts")) else {
        return out;
    };
    for id in ids.flatten() {
        let Ok(rd) = fs::read_dir(id.path()) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Disk use of a tree (allocated blocks; hard-linked files once), without
/// following symlinks or crossing into other filesystems.
fn dir_size(path: &Path) -> u64 {
    let mut seen = BTreeSet::new();
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    let Ok(top) = fs::symlink_metadata(path) else {
        return 0;
    };
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.dev() != top.dev() || !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        total += m.blocks() * 512;
        if m.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

/// Removes a snapshot or cache-mount directory: first renamed into the
/// store's `tmp/` (atomic), so a prune killed half-way never leaves a
/// half-deleted tree under a name a build would use; a leftover in `tmp/`
/// is a stray temp file for `check --repair`.
fn remove_dir(root: &Path, path: &Path) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let doomed = root.join("tmp").join(format!(
        "{}prune-{}-{}",
        rbuild_cache::TEMP_PREFIX,
        std::process::id(),
        name.unwrap_or_default()
    ));
    match fs::rename(path, &doomed) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(anyhow!("moving {} aside: {e}", path.display())),
    }
    fs::remove_dir_all(&doomed).map_err(|e| anyhow!("removing {}: {e}", doomed.display()))
}

/// Mount points at or below the store root, innermost first (from
/// `/proc/self/mountinfo`, whose octal escapes are decoded).
fn store_mounts(root: &Path) -> Vec<PathBuf> {
    let root = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(&root) && *m != root)
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    out.dedup();
    out
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
        if octal {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches a mount (lazily, so a busy one goes once unused).
fn unmount(path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
    let r = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A size as docker's `--keep-storage` takes it: a number with an optional
/// binary unit (`b`, `k`/`kb`/`kib`, `m`..., `g`..., `t`...), so `10GB` is
/// 10 GiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number and a unit, e.g. 10GB"))?;
    let mult: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("invalid size {s:?}: unknown unit {other:?}")),
    };
    Ok((n * mult as f64) as u64)
}

/// A Go-style duration (`24h`, `90m`, `1h30m`, `10s`).
fn parse_duration(s: &str) -> Result<Duration> {
    humantime::parse_duration(s).map_err(|e| anyhow!("invalid duration {s:?} in until=: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("10GB"), Ok(10 << 30));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5qb").is_err());
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mountinfo(r"/x\\"), r"/x\\");
    }
}
