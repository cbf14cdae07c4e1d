//! `-o/--output` specifications in BuildKit's syntax: a CSV list of
//! `key=value` attributes (`type=oci,dest=out.tar`), or a bare path meaning
//! `type=local,dest=PATH`, or `-` meaning a tarball on stdout.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};

/// What an output writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputKind {
    /// An OCI image layout: a tarball, or a directory when `tar=false`.
    Oci {
        /// Whether the layout is written as a tarball (BuildKit's default).
        tar: bool,
    },
    /// A docker-archive tarball (`docker load` format).
    Docker,
    /// The final filesystem of the target, as a directory.
    Local,
    /// The final filesystem of the target, as a tarball.
    Tar,
    /// The image store itself: only names the image (`name=`).
    Image,
}

/// Where an output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// A file or directory path.
    Path(PathBuf),
    /// Standard output (`dest=-`).
    Stdout,
}

/// One parsed `-o` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    /// What to write.
    pub kind: OutputKind,
    /// Where to write it; `None` only for [`OutputKind::Image`].
    pub dest: Option<Dest>,
    /// Image names from `name=` (comma-separated inside a quoted field), used
    /// for the annotations and RepoTags of archive outputs and as tags for
    /// `type=image`.
    pub names: Vec<String>,
    /// `push=true` (type=image only): push the image under its names.
    pub push: bool,
}

/// Attributes BuildKit's exporters accept that rbuild reads elsewhere or that
/// do not change what rbuild writes; they are accepted and ignored rather than
/// rejected, so command lines written for buildx keep working.
const ACCEPTED_IGNORED: &[&str] = &[
    "oci-mediatypes",
    "force-compression",
    "compression",
    "compression-level",
    "store",
    "unpack",
    "platform-split",
];

impl OutputSpec {
    /// Parses one `-o` value.
    pub fn parse(value: &str) -> Result<OutputSpec> {
        if value == "-" {
            return Ok(OutputSpec {
                kind: OutputKind::Tar,
                dest: Some(Dest::Stdout),
                names: Vec::new(),
                push: false,
            });
        }
        let fields = split_csv(value)?;
        if fields.len() == 1 && !fields[0].contains('=') {
            return Ok(OutputSpec {
                kind: OutputKind::Local,
                dest: Some(Dest::Path(PathBuf::from(&fields[0]))),
                names: Vec::new(),
                push: false,
            });
        }
        let mut kind_name = None;
        let mut dest = None;
        let mut tar = None;
        let mut names = Vec::new();
        let mut push = false;
        for field in &fields {
            let (key, val) = field
                .split_once('=')
                .ok_or_else(|| anyhow!("invalid output attribute {field:?}: expected key=value"))?;
            match key.trim().to_ascii_lowercase().as_str() {
                "type" => kind_name = Some(val.to_string()),
                "dest" => {
                    dest = Some(if val == "-" {
                        Dest::Stdout
                    } else {
                        Dest::Path(PathBuf::from(val))
                    })
                }
                "tar" => {
                    tar = Some(parse_bool(val).ok_or_else(|| {
                        anyhow!(
                        "invalid value {val:?} for output attribute tar: expected true or false"
                    )
                    })?)
                }
                "push" => {
                    push = parse_bool(val).ok_or_else(|| {
                        anyhow!(
                        "invalid value {val:?} for output attribute push: expected true or false"
                    )
                    })?
                }
                "name" => names.extend(
                    val.split(',')
                        .map(str::trim)
                        .filter(|n| !n.is_empty())
                        .map(String::from),
                ),
                k if ACCEPTED_IGNORED.contains(&k) || k.starts_with("annotation") => {}
                other => bail!("unknown output attribute {other:?} in {value:?}"),
            }
        }
        let kind_name =
            kind_name.ok_or_else(|| anyhow!("output {value:?} has no type= attribute"))?;
        let kind = match kind_name.as_str() {
            "oci" => OutputKind::Oci {
                tar: tar.unwrap_or(true),
            },
            "docker" => OutputKind::Docker,
            "local" => OutputKind::Local,
            "tar" => OutputKind::Tar,
            "image" => OutputKind::Image,
            other => bail!(
                "unsupported output type {other:?} (supported: oci, docker, local, tar, image)"
            ),
        };
        if tar.is_some() && !matches!(kind, OutputKind::Oci { .. }) {
            bail!("output attribute tar= applies only to type=oci");
        }
        if push && kind != OutputKind::Image {
            bail!("output attribute push= applies only to type=image");
        }
        match (&kind, &dest) {
            (OutputKind::Image, Some(_)) => bail!("type=image takes no dest="),
            (OutputKind::Image, None) => {}
            (_, None) => bail!("output type={kind_name} needs dest="),
            (OutputKind::Local, Some(Dest::Stdout)) => {
                bail!("type=local writes a directory and cannot go to stdout; use type=tar,dest=-")
            }
            (OutputKind::Oci { tar: false }, Some(Dest::Stdout)) => {
                bail!("type=oci,tar=false writes a directory and cannot go to stdout")
            }
            _ => {}
        }
        Ok(OutputSpec {
            kind,
            dest,
            names,
            push,
        })
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "t" => Some(true),
        "false" | "0" | "f" => Some(false),
        _ => None,
    }
}

/// Splits one CSV record the way Go's `encoding/csv` (which BuildKit uses)
/// does for a single line: commas separate fields, a field may be wrapped in
/// double quotes to hold commas, and `""` inside quotes is one quote.
pub(crate) fn split_csv(line: &str) -> Result<Vec<String>> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut in_quotes = false;
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_quotes = false;
                    if !matches!(chars.peek(), None | Some(',')) {
                        bail!("invalid output {line:?}: text after a closing quote");
                    }
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' if at_field_start => {
                in_quotes = true;
                at_field_start = false;
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            _ => {
                field.push(c);
                at_field_start = false;
            }
        }
    }
    if in_quotes {
        bail!("invalid output {line:?}: unterminated quote");
    }
    fields.push(field);
    Ok(fields.into_iter().filter(|f| !f.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Option<Dest> {
        Some(Dest::Path(PathBuf::from(p)))
    }

    #[test]
    fn oci_tarball_and_dir() {
        let o = OutputSpec::parse("type=oci,dest=out.tar").unwrap();
        assert_eq!(o.kind, OutputKind::Oci { tar: true });
        assert_eq!(o.dest, path("out.tar"));
        let o = OutputSpec::parse("type=oci,dest=dir,tar=false").unwrap();
        assert_eq!(o.kind, OutputKind::Oci { tar: false });
    }

    #[test]
    fn bare_path_is_local_and_dash_is_stdout_tar() {
        let o = OutputSpec::parse("outdir").unwrap();
        assert_eq!(o.kind, OutputKind::Local);
        assert_eq!(o.dest, path("outdir"));
        let o = OutputSpec::parse("-").unwrap();
        assert_eq!((o.kind, o.dest), (OutputKind::Tar, Some(Dest::Stdout)));
    }

    #[test]
    fn quoted_names_hold_commas() {
        let o = OutputSpec::parse(r#"type=docker,dest=a.tar,"name=app:1,app:latest""#).unwrap();
        assert_eq!(o.kind, OutputKind::Docker);
        assert_eq!(o.names, vec!["app:1", "app:latest"]);
    }

    #[test]
    fn image_output_names_only() {
        let o = OutputSpec::parse("type=image,name=x:1").unwrap();
        assert_eq!(
            (o.kind, o.dest, o.names),
            (OutputKind::Image, None, vec!["x:1".to_string()])
        );
        assert!(!o.push);
        let o = OutputSpec::parse(r#"type=image,"name=r/x:1,r/x:2",push=true"#).unwrap();
        assert!(o.push);
        assert_eq!(o.names, vec!["r/x:1", "r/x:2"]);
        assert!(OutputSpec::parse("type=oci,dest=x,push=true").is_err());
        assert!(OutputSpec::parse("type=image,push=maybe").is_err());
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            ("dest=x", "no type="),
            ("type=oci", "needs dest="),
            ("type=zip,dest=x", "unsupported output type \"zip\""),
            ("type=local,dest=-", "cannot go to stdout"),
            ("type=oci,dest=x,tar=maybe", "tar"),
            ("type=local,dest=x,tar=false", "only to type=oci"),
            (
                "type=oci,dest=x,colour=red",
                "unknown output attribute \"colour\"",
            ),
            ("type=oci,\"dest=x", "unterminated quote"),
        ];
        for (input, want) in cases {
            let err = OutputSpec::parse(input).unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
    }
}
