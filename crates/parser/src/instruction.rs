//! The instruction layer: low-level [`Node`]s to typed [`Instruction`]s, with BuildKit's
//! argument-count and flag checks (`instructions.Parse`).
//!
//! Arguments and flag values stay raw (unexpanded, quotes as written for ENV/LABEL/ARG): the
//! solver expands them with the variables in scope via [`Instruction::expand`]. Checks that
//! BuildKit only makes when converting (mount options, ports, `--chmod`, signals, stage
//! references) are in `validate.rs`.

use std::time::Duration;

use serde::Serialize;

use crate::error::ErrorKind;
use crate::flags::{parse_flags, with_suggestion, FlagKind};
use crate::lowlevel::{parse_heredoc, Heredoc, Node};
use crate::mount::parse_mount;
use crate::quote::{go_equal_fold, go_lower, go_quote, go_upper};

/// One Dockerfile instruction with typed arguments and flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    tag = "instruction",
    content = "args",
    rename_all = "SCREAMING_SNAKE_CASE"
)]
pub enum Instruction {
    /// `FROM [--platform=P] image [AS name]`
    From(From),
    /// `RUN [--mount=...] [--network=...] [--security=...] command`
    Run(Run),
    /// `CMD command`
    Cmd(CommandLine),
    /// `LABEL k=v ...`
    Label(Vec<KeyValue>),
    /// `MAINTAINER text` (deprecated)
    Maintainer(String),
    /// `EXPOSE port[/proto] ...` (sorted, as BuildKit does)
    Expose(Vec<String>),
    /// `ENV k=v ...` or `ENV k v`
    Env(Vec<KeyValue>),
    /// `ADD [flags] src... dest`
    Add(Add),
    /// `COPY [flags] src... dest`
    Copy(Copy),
    /// `ENTRYPOINT command`
    Entrypoint(CommandLine),
    /// `VOLUME path...` (each trimmed, none empty)
    Volume(Vec<String>),
    /// `USER user[:group]` (the rest of the line)
    User(String),
    /// `WORKDIR path` (the rest of the line)
    Workdir(String),
    /// `ARG name[=default] ...`
    Arg(Vec<ArgDef>),
    /// `ONBUILD instruction`
    Onbuild(Onbuild),
    /// `STOPSIGNAL signal`
    StopSignal(String),
    /// `HEALTHCHECK [flags] CMD command` or `HEALTHCHECK NONE`
    Healthcheck(Healthcheck),
    /// `SHELL ["exe", "arg"...]`
    Shell(Vec<String>),
}

impl Instruction {
    /// The upper-case instruction name (`RUN`).
    pub fn name(&self) -> &'static str {
        match self {
            Instruction::From(_) => "FROM",
            Instruction::Run(_) => "RUN",
            Instruction::Cmd(_) => "CMD",
            Instruction::Label(_) => "LABEL",
            Instruction::Maintainer(_) => "MAINTAINER",
            Instruction::Expose(_) => "EXPOSE",
            Instruction::Env(_) => "ENV",
            Instruction::Add(_) => "ADD",
            Instruction::Copy(_) => "COPY",
            Instruction::Entrypoint(_) => "ENTRYPOINT",
            Instruction::Volume(_) => "VOLUME",
            Instruction::User(_) => "USER",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::Arg(_) => "ARG",
            Instruction::Onbuild(_) => "ONBUILD",
            Instruction::StopSignal(_) => "STOPSIGNAL",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Shell(_) => "SHELL",
        }
    }
}

/// `FROM`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct From {
    /// The base image (or stage name), raw.
    pub image: String,
    /// `--platform` value, raw.
    pub platform: Option<String>,
    /// The stage name after `AS`, lower-cased as BuildKit does.
    pub stage_name: Option<String>,
}

/// A command in shell form (`prepend_shell`, one element) or exec form (JSON elements).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandLine {
    /// Shell form: one element, the text as written; exec form: the decoded JSON elements.
    /// Empty for a bare `RUN`/`CMD`/`ENTRYPOINT`.
    pub args: Vec<String>,
    /// True for shell form: the stage's `SHELL` is prepended when it runs.
    pub prepend_shell: bool,
}

/// `--network` of RUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The builder's default network.
    Default,
    /// No network at all.
    None,
    /// The host's network namespace.
    Host,
}

/// `--security` of RUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// The normal sandbox.
    Sandbox,
    /// Privileged (needs the builder's entitlement).
    Insecure,
}

/// `RUN`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    /// The command.
    pub command: CommandLine,
    /// `--mount` values, raw CSV (`type=cache,target=/x`). Expansion parses them into
    /// [`crate::Mount`]s: see [`Instruction::expand`] and [`crate::Expanded::mounts`].
    pub mounts: Vec<String>,
    /// `--network`, when given.
    pub network: Option<NetworkMode>,
    /// `--security`, when given.
    pub security: Option<Security>,
    /// `--device` values (BuildKit labs only; rejected by validation).
    pub devices: Vec<String>,
    /// Heredoc bodies (`RUN <<EOF`), raw; each becomes a file the command reads.
    pub heredocs: Vec<Heredoc>,
}

/// A `KEY=value` pair of ENV or LABEL; both sides raw shell words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    /// The key, raw.
    pub key: String,
    /// The value, raw (quotes as written; expansion removes them).
    pub value: String,
    /// True for the legacy `ENV KEY value with spaces` form.
    pub legacy: bool,
}

/// An inline source file of COPY/ADD from a heredoc (`COPY <<EOF /dest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InlineSource {
    /// The heredoc name, used as the file name.
    pub path: String,
    /// The body, leading tabs already removed for `<<-`.
    pub data: String,
    /// Whether variables in `data` are expanded (unquoted delimiter).
    pub expand: bool,
}

/// `COPY`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Copy {
    /// Source paths (context or `--from` stage/image), raw.
    pub sources: Vec<String>,
    /// Heredoc sources.
    pub inline: Vec<InlineSource>,
    /// Destination, raw.
    pub dest: String,
    /// `--from`.
    pub from: Option<String>,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude` patterns.
    pub exclude: Vec<String>,
}

/// `ADD`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Add {
    /// Source paths or URLs, raw.
    pub sources: Vec<String>,
    /// Heredoc sources.
    pub inline: Vec<InlineSource>,
    /// Destination, raw.
    pub dest: String,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--keep-git-dir`, when given.
    pub keep_git_dir: Option<bool>,
    /// `--checksum`.
    pub checksum: Option<String>,
    /// `--unpack`, when given.
    pub unpack: Option<bool>,
    /// `--exclude` patterns.
    pub exclude: Vec<String>,
}

/// One `ARG` definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgDef {
    /// The name.
    pub name: String,
    /// The default value, raw (quotes as written).
    pub default: Option<String>,
}

/// `ONBUILD`: the trigger is stored as text and parsed when a child image builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Onbuild {
    /// The trigger instruction's keyword, upper-cased.
    pub trigger: String,
    /// The trigger text (`RUN echo hi`), heredoc bodies re-attached.
    pub expression: String,
}

/// `HEALTHCHECK`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable the base image's check.
    None,
    /// `HEALTHCHECK [flags] CMD ...`.
    Cmd(HealthcheckCmd),
}

/// A configured health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthcheckCmd {
    /// The image config's `Test`: `["CMD", args...]` or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    /// `--interval` (None when not given or zero).
    pub interval: Option<Duration>,
    /// `--timeout`.
    pub timeout: Option<Duration>,
    /// `--start-period`.
    pub start_period: Option<Duration>,
    /// `--start-interval`.
    pub start_interval: Option<Duration>,
    /// `--retries`.
    pub retries: Option<u32>,
}

type Res<T> = Result<T, (ErrorKind, String)>;

fn flag_err(e: String) -> (ErrorKind, String) {
    (ErrorKind::Flag, e)
}

fn args_err(e: String) -> (ErrorKind, String) {
    (ErrorKind::Arguments, e)
}

const ALL_NAMES: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

impl Node {
    /// This node as a typed instruction (BuildKit `ParseInstruction`), errors located at the
    /// node.
    pub fn instruction(&self) -> Result<Instruction, crate::ParseError> {
        parse_instruction(self).map_err(|(kind, msg)| crate::ParseError::at(kind, self.span, msg))
    }
}

/// Turns one node into a typed instruction (BuildKit `ParseInstruction`).
pub(crate) fn parse_instruction(node: &Node) -> Res<Instruction> {
    let args = node.flat_args();
    let flags = &node.flags;
    let none: &[(&str, FlagKind)] = &[];
    let exactly_one = |name: &str| -> Res<String> {
        if args.len() != 1 {
            return Err(args_err(format!("{name} requires exactly one argument")));
        }
        Ok(args[0].clone())
    };
    let at_least_one = |name: &str| -> Res<()> {
        if args.is_empty() {
            return Err(args_err(format!("{name} requires at least one argument")));
        }
        Ok(())
    };
    Ok(match node.command().as_str() {
        "env" => {
            parse_flags(flags, none).map_err(flag_err)?;
            Instruction::Env(parse_kvps(&args, "ENV")?)
        }
        "maintainer" => {
            let m = exactly_one("MAINTAINER")?;
            parse_flags(flags, none).map_err(flag_err)?;
            Instruction::Maintainer(m)
        }
        "label" => {
            parse_flags(flags, none).map_err(flag_err)?;
            Instruction::Label(parse_kvps(&args, "LABEL")?)
        }
        "add" => {
            if args.len() < 2 {
                return Err(args_err(no_dest("ADD")));
            }
            let f = parse_flags(
                flags,
                &[
                    ("chown", FlagKind::Str),
                    ("chmod", FlagKind::Str),
                    ("link", FlagKind::Bool),
                    ("keep-git-dir", FlagKind::Bool),
                    ("checksum", FlagKind::Str),
                    ("unpack", FlagKind::Bool),
                    ("exclude", FlagKind::Strs),
                ],
            )
            .map_err(flag_err)?;
            let (sources, inline, dest) = sources_and_dest(&args, &node.heredocs, "ADD")?;
            Instruction::Add(Add {
                sources,
                inline,
                dest,
                chown: f.string("chown"),
                chmod: f.string("chmod"),
                link: f.bool("link").unwrap_or(false),
                keep_git_dir: f.bool("keep-git-dir"),
                checksum: f.string("checksum"),
                unpack: f.bool("unpack"),
                exclude: f.list("exclude"),
            })
        }
        "copy" => {
            if args.len() < 2 {
                return Err(args_err(no_dest("COPY")));
            }
            let f = parse_flags(
                flags,
                &[
                    ("chown", FlagKind::Str),
                    ("from", FlagKind::Str),
                    ("chmod", FlagKind::Str),
                    ("link", FlagKind::Bool),
                    ("exclude", FlagKind::Strs),
                    ("parents", FlagKind::Bool),
                ],
            )
            .map_err(flag_err)?;
            let (sources, inline, dest) = sources_and_dest(&args, &node.heredocs, "COPY")?;
            Instruction::Copy(Copy {
                sources,
                inline,
                dest,
                from: f.string("from"),
                chown: f.string("chown"),
                chmod: f.string("chmod"),
                link: f.bool("link").unwrap_or(false),
                parents: f.bool("parents").unwrap_or(false),
                exclude: f.list("exclude"),
            })
        }
        "from" => {
            let stage_name = match args.len() {
                3 if go_equal_fold(&args[1], "as") => {
                    let name = go_lower(&args[2]);
                    if !valid_stage_name(&name) {
                        return Err((
                            ErrorKind::Syntax,
                            format!(
                                "invalid name for build stage: {}, name can't start with a number or contain symbols",
                                go_quote(&args[2])
                            ),
                        ));
                    }
                    Some(name)
                }
                1 => None,
                _ => {
                    return Err(args_err(
                        "FROM requires either one or three arguments".into(),
                    ))
                }
            };
            let f = parse_flags(flags, &[("platform", FlagKind::Str)]).map_err(flag_err)?;
            Instruction::From(From {
                image: args[0].clone(),
                platform: f.string("platform"),
                stage_name,
            })
        }
        "onbuild" => {
            at_least_one("ONBUILD")?;
            parse_flags(flags, none).map_err(flag_err)?;
            let trigger = go_upper(args[0].trim());
            match trigger.as_str() {
                "ONBUILD" => {
                    return Err((
                        ErrorKind::Syntax,
                        "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into(),
                    ))
                }
                "MAINTAINER" | "FROM" => {
                    return Err((
                        ErrorKind::Syntax,
                        format!("{trigger} isn't allowed as an ONBUILD trigger"),
                    ))
                }
                _ => {}
            }
            let mut expression = strip_onbuild(&node.original);
            for h in &node.heredocs {
                expression.push('\n');
                expression.push_str(&h.content);
                expression.push_str(&h.name);
            }
            Instruction::Onbuild(Onbuild {
                trigger,
                expression,
            })
        }
        "workdir" => {
            let p = exactly_one("WORKDIR")?;
            parse_flags(flags, none).map_err(flag_err)?;
            Instruction::Workdir(p)
        }
        "run" => {
            let f = parse_flags(
                flags,
                &[
                    ("device", FlagKind::Strs),
                    ("mount", FlagKind::Strs),
                    ("network", FlagKind::Str),
                    ("security", FlagKind::Str),
                ],
            )
            .map_err(flag_err)?;
            let devices = f.list("device");
            for d in &devices {
                crate::mount::parse_device(d).map_err(flag_err)?;
            }
            let mounts = f.list("mount");
            for m in &mounts {
                parse_mount(m, None).map_err(flag_err)?;
            }
            let network = match f.string("network").as_deref() {
                None => None,
                Some("default") => Some(NetworkMode::Default),
                Some("none") => Some(NetworkMode::None),
                Some("host") => Some(NetworkMode::Host),
                Some(other) => {
                    return Err(flag_err(format!(
                        "invalid network mode {}",
                        go_quote(other)
                    )))
                }
            };
            let security = match f.string("security").as_deref() {
                None => None,
                Some("sandbox") => Some(Security::Sandbox),
                Some("insecure") => Some(Security::Insecure),
                Some(other) => {
                    return Err(flag_err(format!(
                        "security {} is not valid",
                        go_quote(other)
                    )))
                }
            };
            Instruction::Run(Run {
                command: command_line(node, &args),
                mounts,
                network,
                security,
                devices,
                heredocs: node.heredocs.clone(),
            })
        }
        "cmd" => {
            parse_flags(flags, none).map_err(flag_err)?;
            Instruction::Cmd(command_line(node, &args))
        }
        "entrypoint" => {
            parse_flags(flags, none).map_err(flag_err)?;
            Instruction::Entrypoint(command_line(node, &args))
        }
        "healthcheck" => {
            at_least_one("HEALTHCHECK")?;
            parse_healthcheck(node, &args)?
        }
        "expose" => {
            at_least_one("EXPOSE")?;
            parse_flags(flags, none).map_err(flag_err)?;
            let mut ports = args.clone();
            ports.sort();
            Instruction::Expose(ports)
        }
        "user" => {
            let u = exactly_one("USER")?;
            parse_flags(flags, none).map_err(flag_err)?;
            Instruction::User(u)
        }
        "volume" => {
            at_least_one("VOLUME")?;
            parse_flags(flags, none).map_err(flag_err)?;
            let mut vols = Vec::new();
            for v in &args {
                let v = v.trim_matches(crate::shell::is_space);
                if v.is_empty() {
                    return Err(args_err(
                        "VOLUME specified can not be an empty string".into(),
                    ));
                }
                vols.push(v.to_string());
            }
            Instruction::Volume(vols)
        }
        // BuildKit never parses the flags of STOPSIGNAL and ARG: they are ignored.
        "stopsignal" => Instruction::StopSignal(exactly_one("STOPSIGNAL")?),
        "arg" => {
            at_least_one("ARG")?;
            let mut defs = Vec::new();
            for a in &args {
                let def = match a.split_once('=') {
                    Some(("", _)) => return Err(args_err("ARG names can not be blank".into())),
                    Some((k, v)) => ArgDef {
                        name: k.to_string(),
                        default: Some(v.to_string()),
                    },
                    None => ArgDef {
                        name: a.clone(),
                        default: None,
                    },
                };
                defs.push(def);
            }
            Instruction::Arg(defs)
        }
        "shell" => {
            parse_flags(flags, none).map_err(flag_err)?;
            let cl = command_line(node, &args);
            if cl.args.is_empty() {
                return Err(args_err("SHELL requires at least one argument".into()));
            }
            if !node.json {
                return Err((
                    ErrorKind::Json,
                    "SHELL requires the arguments to be in JSON form".to_string(),
                ));
            }
            Instruction::Shell(cl.args)
        }
        _ => {
            return Err((
                ErrorKind::UnknownInstruction,
                with_suggestion(
                    format!("unknown instruction: {}", node.keyword),
                    &node.keyword,
                    &ALL_NAMES,
                    false,
                ),
            ))
        }
    })
}

fn no_dest(cmd: &str) -> String {
    format!("{cmd} requires at least two arguments, but only one was provided. Destination could not be determined")
}

fn valid_stage_name(name: &str) -> bool {
    let mut cs = name.chars();
    matches!(cs.next(), Some('a'..='z'))
        && cs.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.'))
}

/// `(?i)^\s*ONBUILD\s*` removed from the original line.
fn strip_onbuild(original: &str) -> String {
    let re_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\x0c' | '\r');
    let s = original.trim_start_matches(re_space);
    match s.get(..7) {
        Some(k) if k.eq_ignore_ascii_case("onbuild") => {
            s[7..].trim_start_matches(re_space).to_string()
        }
        _ => original.to_string(),
    }
}

fn command_line(node: &Node, args: &[String]) -> CommandLine {
    let args = if args.is_empty() || node.json {
        args.to_vec()
    } else {
        vec![args.join(" ")]
    };
    CommandLine {
        args,
        prepend_shell: !node.json,
    }
}

fn parse_kvps(args: &[String], cmd: &str) -> Res<Vec<KeyValue>> {
    if args.is_empty() {
        return Err(args_err(format!("{cmd} requires at least one argument")));
    }
    if args.len() % 3 != 0 {
        return Err(args_err(format!("Bad input to {cmd}, too many arguments")));
    }
    let mut out = Vec::new();
    for c in args.chunks(3) {
        if c[0].is_empty() {
            return Err(args_err(format!("{cmd} names can not be blank")));
        }
        out.push(KeyValue {
            key: c[0].clone(),
            value: c[1].clone(),
            legacy: c[2].is_empty(),
        });
    }
    Ok(out)
}

type SourcesAndDest = (Vec<String>, Vec<InlineSource>, String);

fn sources_and_dest(args: &[String], heredocs: &[Heredoc], cmd: &str) -> Res<SourcesAndDest> {
    let (dest, srcs) = args.split_last().expect("caller checked two arguments");
    if matches!(parse_heredoc(dest), Ok(Some(_))) {
        return Err((
            ErrorKind::Heredoc,
            format!("{cmd} cannot accept a heredoc as a destination"),
        ));
    }
    let mut sources = Vec::new();
    let mut inline = Vec::new();
    for s in srcs {
        match parse_heredoc(s) {
            Ok(Some(h)) => {
                // The last body with that name wins, as in BuildKit's lookup map.
                let content = heredocs
                    .iter()
                    .rev()
                    .find(|b| b.name == h.name)
                    .map(|b| b.content.clone())
                    .unwrap_or_default();
                let data = if h.chomp {
                    crate::lowlevel::chomp_tabs(&content)
                } else {
                    content
                };
                inline.push(InlineSource {
                    path: h.name,
                    data,
                    expand: h.expand,
                });
            }
            _ => sources.push(s.clone()),
        }
    }
    Ok((sources, inline, dest.clone()))
}

fn parse_healthcheck(node: &Node, args: &[String]) -> Res<Instruction> {
    let typ = go_upper(&args[0]);
    let rest = &args[1..];
    if typ == "NONE" {
        if !rest.is_empty() {
            return Err(args_err("HEALTHCHECK NONE takes no arguments".into()));
        }
        return Ok(Instruction::Healthcheck(Healthcheck::None));
    }
    let f = parse_flags(
        &node.flags,
        &[
            ("interval", FlagKind::Str),
            ("timeout", FlagKind::Str),
            ("start-period", FlagKind::Str),
            ("start-interval", FlagKind::Str),
            ("retries", FlagKind::Str),
        ],
    )
    .map_err(flag_err)?;
    if typ != "CMD" {
        return Err((
            ErrorKind::Syntax,
            format!("Unknown type {} in HEALTHCHECK (try CMD)", go_quote(&typ)),
        ));
    }
    let cl = command_line(node, rest);
    if cl.args.is_empty() {
        return Err(args_err("Missing command after HEALTHCHECK CMD".into()));
    }
    let mut test = vec![if node.json { "CMD" } else { "CMD-SHELL" }.to_string()];
    test.extend(cl.args);
    let interval = |name: &str| -> Res<Option<Duration>> {
        let v = f.string(name).unwrap_or_default();
        if v.is_empty() {
            return Ok(None);
        }
        let d = parse_go_duration(&v).map_err(flag_err)?;
        if d == 0 {
            return Ok(None);
        }
        if d < 1_000_000 {
            return Err(flag_err(format!(
                "Interval {} cannot be less than 1ms",
                go_quote(name)
            )));
        }
        Ok(Some(Duration::from_nanos(d as u64)))
    };
    let cmd = HealthcheckCmd {
        test,
        interval: interval("interval")?,
        timeout: interval("timeout")?,
        start_period: interval("start-period")?,
        start_interval: interval("start-interval")?,
        retries: match f.string("retries").unwrap_or_default().as_str() {
            "" => None,
            v => {
                let n = parse_go_int32(v).map_err(flag_err)?;
                if n < 0 {
                    return Err(flag_err(format!("--retries cannot be negative ({n})")));
                }
                Some(n as u32)
            }
        },
    };
    Ok(Instruction::Healthcheck(Healthcheck::Cmd(cmd)))
}

/// Go's `strconv.ParseInt(s, 10, 32)` with its error texts.
fn parse_go_int32(s: &str) -> Result<i32, String> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "strconv.ParseInt: parsing {}: invalid syntax",
            go_quote(s)
        ));
    }
    s.parse::<i32>().map_err(|_| {
        format!(
            "strconv.ParseInt: parsing {}: value out of range",
            go_quote(s)
        )
    })
}

/// Go's `time.ParseDuration`, in nanoseconds (negative allowed), with Go's error texts.
pub(crate) fn parse_go_duration(s: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration {}", go_quote(s));
    let mut rest = s;
    let mut neg = false;
    if let Some(r) = rest.strip_prefix(['-', '+']) {
        neg = s.starts_with('-');
        rest = r;
    }
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &r[..n];
            rest = &r[n..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(rest.len(), |(i, _)| i);
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration {}", go_quote(s)));
        }
        let mult: i128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    go_quote(unit),
                    go_quote(s)
                ))
            }
        };
        let int: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse::<i128>().map_err(|_| invalid())?
        };
        let mut v = int.checked_mul(mult).ok_or_else(invalid)?;
        let mut scale = mult;
        for d in frac_part.bytes() {
            if scale < 10 {
                break;
            }
            scale /= 10;
            v += i128::from(d - b'0') * scale;
        }
        total = total.checked_add(v).ok_or_else(invalid)?;
        if total > i128::from(i64::MAX) + i128::from(neg) {
            return Err(invalid());
        }
    }
    Ok(if neg { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(parse_go_duration("1.5ms").unwrap(), 1_500_000);
        assert_eq!(parse_go_duration("-2s").unwrap(), -2_000_000_000);
        assert_eq!(
            parse_go_duration("30").unwrap_err(),
            "time: missing unit in duration \"30\""
        );
        assert_eq!(
            parse_go_duration("1d").unwrap_err(),
            "time: unknown unit \"d\" in duration \"1d\""
        );
        assert!(parse_go_duration("abc").is_err());
        assert!(parse_go_duration("").is_err());
    }

    #[test]
    fn stage_names() {
        assert!(valid_stage_name("build-1.x_y"));
        assert!(!valid_stage_name("1base"));
        assert!(!valid_stage_name("_b"));
    }
}
