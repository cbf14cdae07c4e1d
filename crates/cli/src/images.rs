//! Image management commands that read or rename what the store holds:
//! `images`, `tag`, `rmi`, `inspect` and `history`, printed the way the
//! docker CLI prints them.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use rbuild_image::{ContainerConfig, Image, Reference, Store};
use serde::Serialize;

use crate::cli::{HistoryArgs, ImagesArgs, InspectArgs, RmiArgs, TagArgs};

/// Finds an image by name, ID or ID prefix, or fails naming what was asked.
pub fn resolve(store: &Store, name_or_id: &str) -> Result<Image> {
    store
        .resolve(name_or_id)
        .with_context(|| format!("looking up image {name_or_id:?}"))?
        .ok_or_else(|| anyhow!("no such image: {name_or_id}"))
}

/// `rbuild images`.
pub fn images(store: &Store, args: &ImagesArgs) -> Result<()> {
    let filter = args
        .filter
        .as_deref()
        .map(|f| Reference::parse(f).map_err(|e| anyhow!("invalid image name {f:?}: {e}")))
        .transpose()?;
    // A filter without a tag matches every tag of the repository.
    let filter_has_tag = args
        .filter
        .as_deref()
        .is_some_and(|f| f.rsplit_once(':').is_some_and(|(_, t)| !t.contains('/')));
    let mut rows = Vec::new();
    for (name, image) in store.images()? {
        if let Some(f) = &filter {
            if f.name() != name.name() || (filter_has_tag && f.tag() != name.tag()) {
                continue;
            }
        }
        rows.push((
            name.familiar_name(),
            name.tag().unwrap_or("<none>").to_string(),
            image,
        ));
    }
    if filter.is_none() {
        // One row per image ID, as docker lists them: an untagged manifest
        // of an image that has a name (the same config with other layer
        // encodings, e.g. loaded from a docker-archive and from an OCI
        // archive) adds nothing.
        let mut shown: std::collections::BTreeSet<_> =
            rows.iter().map(|(_, _, i)| i.config_digest).collect();
        for image in store.dangling()? {
            if shown.insert(image.config_digest) {
                rows.push(("<none>".into(), "<none>".into(), image));
            }
        }
    }
    let id = |image: &Image| {
        if args.no_trunc {
            image.config_digest.to_string()
        } else {
            image.short_id()
        }
    };
    if args.quiet {
        for (_, _, image) in &rows {
            println!("{}", id(image));
        }
        return Ok(());
    }
    let now = SystemTime::now();
    let mut table = Table::new(if args.digests {
        &["REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE"][..]
    } else {
        &["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"][..]
    });
    for (repo, tag, image) in &rows {
        let mut row = vec![repo.clone(), tag.clone()];
        if args.digests {
            row.push(image.manifest_digest.to_string());
        }
        row.push(id(image));
        row.push(created_ago(image.config.created.as_deref(), now));
        row.push(human_size(image.size()));
        table.push(row);
    }
    print!("{}", table.render());
    Ok(())
}

/// `rbuild tag SRC DST`.
pub fn tag(store: &Store, args: &TagArgs) -> Result<()> {
    let image = resolve(store, &args.source)?;
    let target = Reference::parse(&args.target)
        .map_err(|e| anyhow!("invalid target name {:?}: {e}", args.target))?;
    if target.digest().is_some() {
        bail!("cannot tag with a digest reference: {}", args.target);
    }
    store
        .tag(&target, &image.manifest_digest)
        .with_context(|| format!("tagging {} as {target}", args.source))?;
    Ok(())
}

/// `rbuild rmi [-f] IMAGE...`: removes each name (or, by ID, the image and
/// all its names when forced); keeps going after a failure and reports
/// them all, as docker does.
pub fn rmi(store: &Store, args: &RmiArgs) -> Result<()> {
    let mut failures = Vec::new();
    for item in &args.images {
        let image = match store.resolve(item) {
            Ok(Some(image)) => image,
            Ok(None) => {
                failures.push(format!("no such image: {item}"));
                continue;
            }
            Err(e) => {
                failures.push(format!("{item}: {e}"));
                continue;
            }
        };
        match store.remove(item, args.force) {
            Ok(names) => {
                for n in &names {
                    println!("Untagged: {}", n.familiar());
                }
                let still_listed = store.names(&image.manifest_digest)?.len()
                    + store
                        .dangling()?
                        .iter()
                        .filter(|d| d.manifest_digest == image.manifest_digest)
                        .count();
                if still_listed == 0 {
                    println!("Deleted: {}", image.config_digest);
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    match failures.len() {
        0 => Ok(()),
        _ => bail!(failures.join("\n")),
    }
}

/// One element of `rbuild inspect`'s array, with docker's field names and
/// order.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct InspectImage<'a> {
    id: String,
    repo_tags: Vec<String>,
    repo_digests: Vec<String>,
    parent: &'static str,
    comment: String,
    created: &'a str,
    author: &'a str,
    config: &'a ContainerConfig,
    architecture: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    variant: &'a str,
    os: &'a str,
    size: u64,
    #[serde(rename = "RootFS")]
    root_fs: InspectRootFs,
    descriptor: InspectDescriptor<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct InspectRootFs {
    #[serde(rename = "Type")]
    kind: String,
    layers: Vec<String>,
}

/// The manifest descriptor, as docker shows it with the containerd store.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InspectDescriptor<'a> {
    media_type: &'a str,
    digest: String,
    size: u64,
}

/// The docker-inspect JSON object of one image.
fn inspect_doc<'a>(store: &Store, image: &'a Image) -> Result<InspectImage<'a>> {
    let names = store.names(&image.manifest_digest)?;
    let repos: BTreeSet<String> = names.iter().map(Reference::familiar_name).collect();
    let c = &image.config;
    let doc = InspectImage {
        id: image.config_digest.to_string(),
        repo_tags: names.iter().map(Reference::familiar).collect(),
        repo_digests: repos
            .iter()
            .map(|r| format!("{r}@{}", image.manifest_digest))
            .collect(),
        parent: "",
        comment: c
            .history
            .last()
            .and_then(|h| h.comment.clone())
            .unwrap_or_default(),
        created: c.created.as_deref().unwrap_or(""),
        author: c.author.as_deref().unwrap_or(""),
        config: &c.config,
        architecture: &c.architecture,
        variant: c.variant.as_deref().unwrap_or(""),
        os: &c.os,
        size: image.size(),
        root_fs: InspectRootFs {
            kind: c.rootfs.kind.clone(),
            layers: c.rootfs.diff_ids.iter().map(ToString::to_string).collect(),
        },
        descriptor: InspectDescriptor {
            media_type: image.manifest.media_type(),
            digest: image.manifest_digest.to_string(),
            size: store.blobs().size(&image.manifest_digest)?,
        },
    };
    Ok(doc)
}

/// `rbuild inspect IMAGE...`: a JSON array of what was found; names that
/// were not found are reported after it and make the command fail.
pub fn inspect(store: &Store, args: &InspectArgs) -> Result<()> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for item in &args.images {
        match store.resolve(item) {
            Ok(Some(image)) => found.push(image),
            Ok(None) => missing.push(format!("no such image: {item}")),
            Err(e) => missing.push(format!("{item}: {e}")),
        }
    }
    let docs = found
        .iter()
        .map(|image| inspect_doc(store, image))
        .collect::<Result<Vec<_>>>()?;
    println!("{}", serde_json::to_string_pretty(&docs)?);
    match missing.len() {
        0 => Ok(()),
        _ => bail!(missing.join("\n")),
    }
}

/// `rbuild history IMAGE`: one row per history entry, newest first; rows
/// that made a layer show its (compressed) size.
pub fn history(store: &Store, args: &HistoryArgs) -> Result<()> {
    let image = resolve(store, &args.image)?;
    let layers = image.layers();
    let mut layer_sizes = layers.iter().map(|l| l.size);
    let mut rows = Vec::new();
    for h in &image.config.history {
        let size = if h.empty_layer {
            0
        } else {
            layer_sizes.next().unwrap_or(0)
        };
        rows.push((h, size));
    }
    let now = SystemTime::now();
    let mut table = Table::new(&["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]);
    for (i, (h, size)) in rows.iter().rev().enumerate() {
        let id = if i == 0 {
            image.short_id()
        } else {
            "<missing>".to_string()
        };
        let created_by = h.created_by.clone().unwrap_or_default();
        let created_by = if args.no_trunc {
            created_by
        } else {
            truncate(&created_by, 45)
        };
        table.push(vec![
            id,
            created_ago(h.created.as_deref(), now),
            created_by,
            human_size(*size),
            h.comment.clone().unwrap_or_default(),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Left-aligned columns separated by three spaces, like the docker CLI's
/// tabwriter output.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }

    fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn render(&self) -> String {
        let cols = self.rows[0].len();
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if c + 1 < cols {
                    let pad = widths[c] - cell.chars().count() + 3;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A size in decimal units with up to four significant digits, as the
/// docker CLI prints it (`4.26MB`, `512B`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    let int_digits = if v < 1.0 {
        1
    } else {
        v.log10().floor() as usize + 1
    };
    let decimals = 4usize.saturating_sub(int_digits);
    let mut s = format!("{v:.decimals$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{s}{}", UNITS[unit])
}

/// "3 hours ago", as the docker CLI words the age of an image.
pub fn created_ago(created: Option<&str>, now: SystemTime) -> String {
    let Some(t) = created.and_then(|c| humantime::parse_rfc3339_weak(c).ok()) else {
        return "N/A".to_string();
    };
    match now.duration_since(t) {
        Ok(d) => format!("{} ago", human_duration(d)),
        // Created in the future (clock skew, or SOURCE_DATE_EPOCH ahead).
        Err(_) => "Less than a second ago".to_string(),
    }
}

/// Docker's (go-units) `HumanDuration` wording.
fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (minutes, hours) = (secs / 60, secs / 3600);
    match () {
        _ if secs < 1 => "Less than a second".into(),
        _ if secs == 1 => "1 second".into(),
        _ if secs < 60 => format!("{secs} seconds"),
        _ if minutes == 1 => "About a minute".into(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", hours / 24 / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(4260), "4.26kB");
        assert_eq!(human_size(1_234_567), "1.235MB");
        assert_eq!(human_size(1_000_000), "1MB");
        assert_eq!(human_size(123_400_000), "123.4MB");
    }

    #[test]
    fn ages_like_docker() {
        let now = humantime::parse_rfc3339("2024-01-10T12:00:00Z").unwrap();
        let ago = |c: &str| created_ago(Some(c), now);
        assert_eq!(ago("2024-01-10T11:59:30Z"), "30 seconds ago");
        assert_eq!(ago("2024-01-10T11:59:00Z"), "About a minute ago");
        assert_eq!(ago("2024-01-10T09:00:00.5Z"), "2 hours ago");
        assert_eq!(ago("2024-01-05T12:00:00Z"), "5 days ago");
        assert_eq!(ago("2023-01-10T12:00:00Z"), "12 months ago");
        assert_eq!(ago("2020-01-10T12:00:00Z"), "4 years ago");
        assert_eq!(created_ago(None, now), "N/A");
        assert_eq!(created_ago(Some("yesterday"), now), "N/A");
    }

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["A", "LONGER", "C"]);
        t.push(vec!["xyz".into(), "1".into(), "".into()]);
        assert_eq!(t.render(), "A     LONGER   C\nxyz   1\n");
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("short", 45), "short");
        let long = "x".repeat(50);
        let t = truncate(&long, 45);
        assert_eq!(t.chars().count(), 45);
        assert!(t.ends_with('…'));
    }
}
