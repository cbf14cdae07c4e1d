//! Checks BuildKit makes while converting a Dockerfile to its build graph, done up front so a
//! build rejects a bad instruction before running any step: `RUN --mount` options and
//! targets, `--device` (labs only), EXPOSE ports, COPY/ADD `--chmod`, `--checksum`, URL
//! sources for COPY, STOPSIGNAL names, FROM `--platform`, blank base names and circular
//! stage references.
//!
//! Values are expanded with the variables a build would have (meta ARGs, stage ARGs and ENV,
//! the given build args, the automatic platform args). A value that still uses an unknown
//! variable is not checked: the solver checks it again after expansion at build time.

use std::collections::BTreeMap;

use crate::error::{ErrorKind, ParseError};
use crate::instruction::{Instruction, KeyValue};
use crate::mount::{parse_mount, parse_u32, MountType};
use crate::quote::go_quote;
use crate::shell::{Env, Lexer};
use crate::{Dockerfile, Span};

/// The platform args BuildKit defines automatically (host and target are linux/amd64 here:
/// only their presence matters for checking).
const PLATFORM_ARGS: [(&str, &str); 8] = [
    ("BUILDPLATFORM", "linux/amd64"),
    ("BUILDOS", "linux"),
    ("BUILDARCH", "amd64"),
    ("BUILDVARIANT", ""),
    ("TARGETPLATFORM", "linux/amd64"),
    ("TARGETOS", "linux"),
    ("TARGETARCH", "amd64"),
    ("TARGETVARIANT", ""),
];

struct Scope<'a> {
    lex: Lexer,
    build_args: &'a dyn Env,
}

impl Scope<'_> {
    /// The expansion of `w`, or `None` when it uses a variable that is not known yet.
    fn known(&self, w: &str, env: &BTreeMap<String, String>) -> Result<Option<String>, String> {
        let r = self.lex.process_word(w, env).map_err(|e| e.to_string())?;
        Ok(r.unmatched.is_empty().then_some(r.result))
    }

    fn arg_value(
        &self,
        name: &str,
        default: Option<&str>,
        env: &BTreeMap<String, String>,
        globals: &BTreeMap<String, String>,
    ) -> Result<Option<String>, String> {
        if let Some(v) = self.build_args.get(name) {
            return Ok(Some(v.to_string()));
        }
        match default {
            Some(d) => self.known(d, env),
            None => Ok(globals.get(name).cloned()),
        }
    }
}

impl Dockerfile {
    /// Runs the conversion-time checks with the given build args (`&rbuild_parser::NoEnv` for
    /// none). The first problem is returned, located at its instruction.
    pub fn validate(&self, build_args: &dyn Env) -> Result<(), ParseError> {
        let scope = Scope {
            lex: Lexer::new(self.escape),
            build_args,
        };
        let mut globals: BTreeMap<String, String> = PLATFORM_ARGS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let fail = |span: Span, msg: String| ParseError::at(ErrorKind::Invalid, span, msg);

        // Stage names and their spans for the dependency check.
        let mut stages: Vec<(Option<String>, Span)> = Vec::new();
        let mut deps: Vec<Vec<String>> = Vec::new();
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        let mut workdir = Some("/".to_string());

        for inst in &self.instructions {
            let span = inst.span;
            let err = |m: String| fail(span, m);
            match &inst.value {
                Instruction::Arg(defs) if stages.is_empty() => {
                    for d in defs {
                        let v = scope
                            .arg_value(&d.name, d.default.as_deref(), &globals, &BTreeMap::new())
                            .map_err(err)?;
                        match v {
                            Some(v) => globals.insert(d.name.clone(), v),
                            None => globals.remove(&d.name),
                        };
                    }
                }
                Instruction::From(f) => {
                    let r = scope
                        .lex
                        .process_word(&f.image, &globals)
                        .map_err(|e| err(e.to_string()))?;
                    if r.result.is_empty() {
                        return Err(err(format!("base name ({}) should not be blank", f.image)));
                    }
                    if let Some(p) = &f.platform {
                        if let Some(p) = scope.known(p, &globals).map_err(err)? {
                            if !p.is_empty() {
                                check_platform(&p).map_err(err)?;
                            }
                        }
                    }
                    let mut d = Vec::new();
                    let base = r.result.to_ascii_lowercase();
                    if stages
                        .iter()
                        .any(|(n, _)| n.as_deref() == Some(base.as_str()))
                    {
                        d.push(base);
                    }
                    stages.push((f.stage_name.clone(), span));
                    deps.push(d);
                    env = BTreeMap::new();
                    workdir = Some("/".to_string());
                }
                other => {
                    // `parse` rejects instructions before the first FROM; a hand-built
                    // Dockerfile may not, and then there is no stage to record edges for.
                    let mut no_stage = Vec::new();
                    let deps_here = deps.last_mut().unwrap_or(&mut no_stage);
                    check_instruction(&scope, other, &mut env, &globals, &mut workdir, deps_here)
                        .map_err(err)?;
                }
            }
        }
        check_cycles(&stages, &deps)
    }
}

fn check_instruction(
    scope: &Scope<'_>,
    inst: &Instruction,
    env: &mut BTreeMap<String, String>,
    globals: &BTreeMap<String, String>,
    workdir: &mut Option<String>,
    deps: &mut Vec<String>,
) -> Result<(), String> {
    match inst {
        Instruction::Arg(defs) => {
            for d in defs {
                match scope.arg_value(&d.name, d.default.as_deref(), env, globals)? {
                    Some(v) => env.insert(d.name.clone(), v),
                    None => env.remove(&d.name),
                };
            }
        }
        Instruction::Env(kvs) => set_env(scope, kvs, env)?,
        Instruction::Workdir(w) => {
            *workdir = match (scope.known(w, env)?, workdir.as_deref()) {
                (Some(w), _) if w.starts_with('/') => Some(w),
                (Some(w), Some(cur)) => Some(format!("{}/{w}", cur.trim_end_matches('/'))),
                _ => None,
            };
        }
        Instruction::Run(r) => {
            if !r.devices.is_empty() {
                return Err(
                    "device feature is only supported in Dockerfile frontend 1.14.0-labs or later"
                        .into(),
                );
            }
            for raw in &r.mounts {
                let mut exp = |v: &str| scope.known(v, env);
                let m = parse_mount(raw, Some(&mut exp))?;
                if let Some(from) = &m.from {
                    deps.push(from.to_ascii_lowercase());
                }
                if matches!(
                    m.kind,
                    MountType::Bind | MountType::Cache | MountType::Tmpfs
                ) {
                    let target = m.target.clone().unwrap_or_default();
                    let resolved = if target.starts_with('/') {
                        Some(clean(&target))
                    } else {
                        workdir.as_ref().map(|w| clean(&format!("/{w}/{target}")))
                    };
                    if resolved.as_deref() == Some("/") {
                        return Err(format!("invalid mount target {}", go_quote("/")));
                    }
                }
            }
        }
        Instruction::Expose(ports) => {
            for p in ports {
                let r = scope.lex.process_word(p, env).map_err(|e| e.to_string())?;
                if !r.unmatched.is_empty() {
                    continue;
                }
                for w in scope.lex.process_words(p, env).map_err(|e| e.to_string())? {
                    check_port(&w)?;
                }
            }
        }
        Instruction::Copy(c) => {
            if let Some(from) = &c.from {
                if let Some(f) = scope.known(from, env)? {
                    if !f.is_empty() {
                        deps.push(f.to_ascii_lowercase());
                    }
                }
            }
            check_chmod(scope, &c.chmod, env)?;
            for s in &c.sources {
                if let Some(s) = scope.known(s, env)? {
                    if is_http(&s) {
                        return Err("source can't be a URL for COPY".into());
                    }
                }
            }
        }
        Instruction::Add(a) => {
            check_chmod(scope, &a.chmod, env)?;
            if let Some(sum) = &a.checksum {
                if let Some(sum) = scope.known(sum, env)? {
                    if !sum.is_empty() {
                        check_digest(&sum)?;
                        if a.sources.len() != 1 {
                            return Err("checksum can't be specified for multiple sources".into());
                        }
                        if let Some(src) = scope.known(&a.sources[0], env)? {
                            if !is_http(&src) && !is_git(&src) {
                                return Err("checksum requires HTTP(S) or Git sources".into());
                            }
                        }
                    }
                }
            }
        }
        Instruction::StopSignal(s) => {
            if let Some(s) = scope.known(s, env)? {
                check_signal(&s)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn set_env(
    scope: &Scope<'_>,
    kvs: &[KeyValue],
    env: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    // All pairs of one ENV are expanded with the variables from before the instruction.
    let before = env.clone();
    for kv in kvs {
        let k = scope.known(&kv.key, &before)?;
        let v = scope.known(&kv.value, &before)?;
        if let Some(k) = k {
            match v {
                Some(v) => env.insert(k, v),
                None => env.remove(&k),
            };
        }
    }
    Ok(())
}

/// `path.Clean` for absolute paths.
fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn is_http(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

fn is_git(s: &str) -> bool {
    s.starts_with("git://")
        || s.starts_with("git@")
        || s.starts_with("ssh://")
        || ((s.starts_with("https://") || s.starts_with("http://")) && s.contains(".git"))
}

fn check_digest(s: &str) -> Result<(), String> {
    let bad = || "invalid checksum digest format".to_string();
    let (algo, hex) = s.split_once(':').ok_or_else(bad)?;
    let len = match algo {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(bad()),
    };
    if hex.len() != len || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad());
    }
    Ok(())
}

/// `--chmod`: an octal mode up to 07777, or a symbolic mode (`u+x`, `u=rwx,g=rx,o=`).
fn check_chmod(
    scope: &Scope<'_>,
    chmod: &Option<String>,
    env: &BTreeMap<String, String>,
) -> Result<(), String> {
    let Some(raw) = chmod else { return Ok(()) };
    let Some(v) = scope.known(raw, env)? else {
        return Ok(());
    };
    if v.is_empty() {
        return Ok(());
    }
    let non_octal = || {
        format!("invalid chmod parameter: '{v}'. it should be octal string and between 0 and 07777")
    };
    if let Some(m) = parse_u32(&v, 8) {
        return if m > 0o7777 { Err(non_octal()) } else { Ok(()) };
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(non_octal());
    }
    for clause in v.split(',') {
        let who_len = clause
            .find(|c: char| !matches!(c, 'u' | 'g' | 'o' | 'a'))
            .unwrap_or(clause.len());
        let mut rest = &clause[who_len..];
        if rest.is_empty() {
            return Err("invalid syntax".into());
        }
        while !rest.is_empty() {
            let mut cs = rest.chars();
            if !matches!(cs.next(), Some('+' | '-' | '=')) {
                return Err("invalid syntax".into());
            }
            let perms = cs.as_str();
            let n = perms
                .find(|c: char| !matches!(c, 'r' | 'w' | 'x' | 'X' | 's' | 't' | 'u' | 'g' | 'o'))
                .unwrap_or(perms.len());
            rest = &perms[n..];
        }
    }
    Ok(())
}

const SIGNALS: [&str; 35] = [
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
    "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
    "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ", "UNUSED",
];

/// moby/sys `signal.ParseSignal` on Linux.
fn check_signal(s: &str) -> Result<(), String> {
    let bad = || format!("invalid signal: {s}");
    if let Ok(n) = s.parse::<i64>() {
        return if n == 0 { Err(bad()) } else { Ok(()) };
    }
    let up = s.to_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if SIGNALS.contains(&name) || name == "RTMIN" || name == "RTMAX" {
        return Ok(());
    }
    let rt = |prefix: &str, max: u32| {
        name.strip_prefix(prefix)
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| (1..=max).contains(&n))
    };
    if rt("RTMIN+", 15) || rt("RTMAX-", 14) {
        return Ok(());
    }
    Err(bad())
}

/// go-connections `nat.ParsePortSpec` checks for one EXPOSE word.
fn check_port(raw: &str) -> Result<(), String> {
    let parts: Vec<&str> = raw.split(':').collect();
    let (ip, host, container) = match parts.len() {
        1 => ("", "", parts[0]),
        2 => ("", parts[0], parts[1]),
        n => {
            let ip_end = raw.len() - parts[n - 1].len() - parts[n - 2].len() - 2;
            (&raw[..ip_end], parts[n - 2], parts[n - 1])
        }
    };
    let (container, proto) = match container.split_once('/') {
        Some((p, proto)) => (p, proto),
        None => (container, "tcp"),
    };
    if !ip.is_empty() {
        let ip = ip
            .strip_prefix('[')
            .and_then(|i| i.strip_suffix(']'))
            .unwrap_or(ip);
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("invalid IP address: {ip}"));
        }
    }
    if container.is_empty() {
        return Err(format!(
            "invalid port: {}: no port specified",
            go_quote(raw)
        ));
    }
    let range = |s: &str| -> Option<(u16, u16)> {
        match s.split_once('-') {
            None => s.parse::<u16>().ok().map(|p| (p, p)),
            Some((a, b)) => {
                let (a, b) = (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?);
                (a <= b).then_some((a, b))
            }
        }
    };
    let (cs, ce) = range(container).ok_or_else(|| format!("invalid containerPort: {container}"))?;
    if !host.is_empty() {
        let (hs, he) = range(host).ok_or_else(|| format!("invalid hostPort: {host}"))?;
        if he - hs != 0 && he - hs != ce - cs {
            return Err(format!(
                "invalid ranges specified for container and host Ports: {container} and {host}"
            ));
        }
    }
    let proto_l = proto.to_ascii_lowercase();
    if !matches!(proto_l.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!(
            "invalid port: {}: invalid proto: {proto}",
            go_quote(raw)
        ));
    }
    Ok(())
}

const KNOWN_OS: [&str; 18] = [
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
    "zos",
];

const KNOWN_ARCH: [&str; 32] = [
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "ppc64",
    "ppc64le",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
    "i386",
    "x86_64",
    "x86-64",
    "aarch64",
    "armhf",
    "armel",
    "macos",
    "ppc64el",
];

/// containerd `platforms.Parse`: `os[/arch[/variant]]` or a lone known OS or architecture.
fn check_platform(p: &str) -> Result<(), String> {
    let bad = |why: &str| {
        format!(
            "failed to parse platform {p}: {}: {why}: invalid argument",
            go_quote(p)
        )
    };
    let parts: Vec<&str> = p.split('/').collect();
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    if parts.len() > 3 || !parts.iter().all(|c| component_ok(c)) {
        return Err(bad("invalid platform component"));
    }
    if parts.len() == 1 {
        let l = parts[0].to_ascii_lowercase();
        if !KNOWN_OS.contains(&l.as_str()) && !KNOWN_ARCH.contains(&l.as_str()) {
            return Err(bad("unknown operating system or architecture"));
        }
    }
    Ok(())
}

fn check_cycles(stages: &[(Option<String>, Span)], deps: &[Vec<String>]) -> Result<(), ParseError> {
    // A reference names a stage by name, else by index; anything else is an image.
    let resolve = |r: &str| -> Option<usize> {
        stages
            .iter()
            .position(|(n, _)| n.as_deref() == Some(r))
            .or_else(|| r.parse::<usize>().ok().filter(|i| *i < stages.len()))
    };
    let edges: Vec<Vec<usize>> = deps
        .iter()
        .map(|d| d.iter().filter_map(|r| resolve(r)).collect())
        .collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut state = vec![0u8; stages.len()];
    for start in 0..stages.len() {
        if state[start] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        state[start] = 1;
        while let Some((node, i)) = stack.pop() {
            if let Some(&next) = edges[node].get(i) {
                stack.push((node, i + 1));
                match state[next] {
                    0 => {
                        state[next] = 1;
                        stack.push((next, 0));
                    }
                    1 => {
                        let (name, span) = &stages[next];
                        let name = name.clone().unwrap_or_else(|| format!("stage-{next}"));
                        return Err(ParseError::at(
                            ErrorKind::Invalid,
                            *span,
                            format!("circular dependency detected on stage: {name}"),
                        ));
                    }
                    _ => {}
                }
            } else {
                state[node] = 2;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert!(check_port("80").is_ok());
        assert!(check_port("0.0.0.0:8080:80/udp").is_ok());
        assert!(check_port("[::1]:8080:80").is_ok());
        assert!(check_port("80-70").is_err());
        assert!(check_port("80/foo").is_err());
        assert!(check_port("80:").is_err());
    }

    #[test]
    fn signals_and_platforms() {
        assert!(check_signal("SIGKILL").is_ok());
        assert!(check_signal("rtmin+3").is_ok());
        assert!(check_signal("9").is_ok());
        assert!(check_signal("SIGFOO").is_err());
        assert!(check_platform("linux/arm64/v8").is_ok());
        assert!(check_platform("arm64").is_ok());
        assert!(check_platform("notaplatform").is_err());
    }
}
