//! Moving images in and out of the store: build outputs (`-o`), `save`,
//! `load` and `import`. The formats themselves are written and read by
//! `rbuild_image::archive`; the final filesystem of `type=local`/`type=tar`
//! is the image's layers applied in order with `unpack_layer`.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use rbuild_image::archive::{self, ArchiveFormat, ImportOptions};
use rbuild_image::{Image, LayerOptions, Reference, Store, UnpackMode};
use rbuild_solver::BuildResult;

use crate::cli::{ArchiveFormat as FormatFlag, ImportArgs, LoadArgs, SaveArgs};
use crate::outputs::{Dest, OutputKind, OutputSpec};

/// Writes one `-o` output of a finished build. `tags` are the `-t` names,
/// used when the output has no `name=` of its own. Returns the progress line
/// describing what was written.
pub fn write_output(
    store: &Store,
    result: &BuildResult,
    spec: &OutputSpec,
    tags: &[Reference],
) -> Result<Option<String>> {
    let image = store
        .image(&result.manifest_digest)
        .context("reading the built image")?;
    let names = if spec.names.is_empty() {
        tags.to_vec()
    } else {
        spec.names
            .iter()
            .map(|n| Reference::parse(n).map_err(|e| anyhow!("invalid output name {n:?}: {e}")))
            .collect::<Result<Vec<_>>>()?
    };
    let dest = match &spec.dest {
        Some(d) => d,
        // type=image: the names were applied with the tags.
        None => return Ok(None),
    };
    let shown = match dest {
        Dest::Stdout => "stdout".to_string(),
        Dest::Path(p) => p.display().to_string(),
    };
    match spec.kind {
        OutputKind::Oci { tar: true } | OutputKind::Docker => {
            let format = if spec.kind == OutputKind::Docker {
                ArchiveFormat::Docker
            } else {
                ArchiveFormat::Oci
            };
            let entries = named_entries(&image, &names);
            with_writer(dest, |w| {
                archive::save(store, &entries, format, w)?;
                Ok(())
            })
            .with_context(|| format!("writing {} archive {shown}", format_name(format)))?;
            Ok(Some(format!(
                "writing {} archive to {shown}",
                format_name(format)
            )))
        }
        OutputKind::Oci { tar: false } => {
            let Dest::Path(dir) = dest else {
                bail!("an OCI layout directory cannot go to stdout");
            };
            archive::save_oci_dir(store, &named_entries(&image, &names), dir)
                .with_context(|| format!("writing OCI layout {shown}"))?;
            Ok(Some(format!("writing OCI layout to {shown}")))
        }
        OutputKind::Local => {
            let Dest::Path(dir) = dest else {
                bail!("type=local writes a directory and cannot go to stdout");
            };
            unpack_image(store, &image, dir)?;
            Ok(Some(format!("copying files to {shown}")))
        }
        OutputKind::Tar => {
            let tmp = tempdir_in_store(store)?;
            unpack_image(store, &image, tmp.path())?;
            with_writer(dest, |w| {
                let mut b = tar::Builder::new(w);
                b.follow_symlinks(false);
                b.mode(tar::HeaderMode::Complete);
                b.append_dir_all(".", tmp.path())?;
                b.into_inner()?.flush()?;
                Ok(())
            })
            .with_context(|| format!("writing root filesystem tarball {shown}"))?;
            Ok(Some(format!("writing root filesystem tarball to {shown}")))
        }
        OutputKind::Image => Ok(None),
    }
}

fn format_name(f: ArchiveFormat) -> &'static str {
    match f {
        ArchiveFormat::Oci => "OCI",
        ArchiveFormat::Docker => "docker",
    }
}

/// The image under each of its names, or once without a name.
fn named_entries(image: &Image, names: &[Reference]) -> Vec<(Option<Reference>, Image)> {
    if names.is_empty() {
        return vec![(None, image.clone())];
    }
    names
        .iter()
        .map(|n| (Some(n.clone()), image.clone()))
        .collect()
}

/// Applies the image's layers, lowest first, into `dir` (created if
/// missing): whiteouts delete what lower layers put there.
fn unpack_image(store: &Store, image: &Image, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for layer in image.layers() {
        rbuild_image::unpack_layer(store.blobs(), &layer, dir, UnpackMode::Apply)
            .with_context(|| format!("unpacking layer {} into {}", layer.digest, dir.display()))?;
    }
    Ok(())
}

/// A scratch directory under the store's `tmp/`, on the store's filesystem.
fn tempdir_in_store(store: &Store) -> Result<tempfile::TempDir> {
    let tmp = store.root().join("tmp");
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    tempfile::Builder::new()
        .prefix("export-")
        .tempdir_in(&tmp)
        .with_context(|| format!("creating a temporary directory in {}", tmp.display()))
}

/// Runs `f` on a buffered writer to a new file (removed again if `f` fails)
/// or to stdout.
fn with_writer(dest: &Dest, f: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    match dest {
        Dest::Stdout => {
            let stdout = std::io::stdout();
            let mut w = BufWriter::new(stdout.lock());
            f(&mut w)?;
            w.flush()?;
            Ok(())
        }
        Dest::Path(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let file =
                File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let mut w = BufWriter::new(file);
            let res = f(&mut w).and_then(|()| {
                w.into_inner()
                    .map_err(|e| anyhow!("writing {}: {}", path.display(), e.error()))?
                    .sync_all()?;
                Ok(())
            });
            if res.is_err() {
                let _ = std::fs::remove_file(path);
            }
            res
        }
    }
}

/// `rbuild save`.
pub fn save(store: &Store, args: &SaveArgs) -> Result<()> {
    let mut entries = Vec::new();
    for item in &args.images {
        let image = crate::images::resolve(store, item)?;
        // A name keeps its tag in the archive; an ID saves the image unnamed.
        let name = Reference::parse(item)
            .ok()
            .filter(|r| store.lookup(r).ok().flatten().is_some() && r.digest().is_none());
        entries.push((name, image));
    }
    let format = match args.format {
        FormatFlag::Oci => ArchiveFormat::Oci,
        FormatFlag::Docker => ArchiveFormat::Docker,
    };
    let dest = if args.output.as_os_str() == "-" {
        Dest::Stdout
    } else {
        Dest::Path(args.output.clone())
    };
    with_writer(&dest, |w| {
        archive::save(store, &entries, format, w)?;
        Ok(())
    })
    .with_context(|| format!("saving to {}", args.output.display()))
}

/// `rbuild load`.
pub fn load(store: &Store, args: &LoadArgs) -> Result<()> {
    let (reader, what): (Box<dyn Read + Send>, String) = match &args.input {
        Some(p) if p.as_os_str() != "-" => (
            Box::new(File::open(p).with_context(|| format!("opening {}", p.display()))?),
            p.display().to_string(),
        ),
        _ => (Box::new(std::io::stdin()), "stdin".to_string()),
    };
    let loaded = archive::load(store, BufReader::new(reader))
        .with_context(|| format!("loading images from {what}"))?;
    if !args.quiet {
        for (name, image) in &loaded {
            match name {
                Some(n) => println!("Loaded image: {}", n.familiar()),
                None => println!("Loaded image ID: {}", image.config_digest),
            }
        }
    }
    Ok(())
}

/// `rbuild import ROOTFS [NAME]`: prints the new image's ID.
pub fn import(store: &Store, args: &ImportArgs) -> Result<()> {
    let name = args
        .name
        .as_deref()
        .map(|n| Reference::parse(n).map_err(|e| anyhow!("invalid image name {n:?}: {e}")))
        .transpose()?;
    // Checked before the tarball is read, so a typo costs nothing.
    let (os, arch, variant) = rbuild_image::config::host_platform();
    let mut config = rbuild_image::ImageConfig::new(os, arch, variant);
    rbuild_solver::apply_changes(&mut config, &args.changes)?;
    let (reader, what): (Box<dyn Read + Send>, String) = if args.source.as_os_str() == "-" {
        (Box::new(std::io::stdin()), "stdin".to_string())
    } else {
        let p = &args.source;
        (
            Box::new(File::open(p).with_context(|| format!("opening {}", p.display()))?),
            p.display().to_string(),
        )
    };
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .filter(|v| !v.is_empty());
    let epoch = epoch
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                anyhow!("invalid SOURCE_DATE_EPOCH {v:?}: expected seconds since 1970")
            })
        })
        .transpose()?;
    let opts = ImportOptions {
        layer: LayerOptions {
            source_date_epoch: epoch.map(|e| e as i64),
            ..LayerOptions::default()
        },
        source: if what == "stdin" {
            "-".into()
        } else {
            what.clone()
        },
        // With SOURCE_DATE_EPOCH an import is reproducible, as a build is.
        created: epoch.map_or_else(SystemTime::now, |e| UNIX_EPOCH + Duration::from_secs(e)),
        message: args.message.clone(),
        config: config.config,
    };
    let image = archive::import_rootfs(store, BufReader::new(reader), name.as_ref(), &opts)
        .with_context(|| format!("importing {what}"))?;
    println!("{}", image.config_digest);
    Ok(())
}
