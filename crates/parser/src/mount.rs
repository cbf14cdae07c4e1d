//! `RUN --mount` and `RUN --device` values: CSV fields parsed into a typed [`Mount`] with
//! BuildKit's rules (`parseMount`), given a word expander for the values.

use serde::Serialize;

use crate::flags::with_suggestion;
use crate::quote::{go_lower, go_quote};

/// The kind of a `RUN --mount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// A read-only (by default) view of the context, a stage or an image.
    Bind,
    /// A persistent cache directory.
    Cache,
    /// An empty tmpfs.
    Tmpfs,
    /// A secret file (or env variable).
    Secret,
    /// An SSH agent socket.
    Ssh,
}

/// How concurrent builds share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    /// Concurrent writers share the directory.
    Shared,
    /// Each writer gets its own copy.
    Private,
    /// Writers wait for each other.
    Locked,
}

/// A parsed `RUN --mount` (after expansion).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// `type=` (default `bind`).
    pub kind: MountType,
    /// `from=`: a stage or image.
    pub from: Option<String>,
    /// `source=`/`src=`.
    pub source: Option<String>,
    /// `target=`/`dst=`/`destination=`.
    pub target: Option<String>,
    /// Read-only: explicit `ro`/`rw`, else true for bind/secret/ssh, false for cache/tmpfs.
    pub readonly: bool,
    /// `size=` of a tmpfs, bytes.
    pub size: Option<i64>,
    /// `id=` (cache id, or secret/ssh id).
    pub id: Option<String>,
    /// `sharing=` of a cache.
    pub sharing: Option<Sharing>,
    /// `required` (secret/ssh).
    pub required: bool,
    /// `env=` (secret as environment variable).
    pub env: Option<String>,
    /// `mode=` (octal).
    pub mode: Option<u32>,
    /// `uid=`.
    pub uid: Option<u32>,
    /// `gid=`.
    pub gid: Option<u32>,
}

/// Expands one mount option value. `Ok(None)` means "not known yet" (validation without the
/// build's variables): the value's own checks are skipped.
pub type MountExpander<'a> = &'a mut dyn FnMut(&str) -> Result<Option<String>, String>;

/// Splits one CSV record like Go's `encoding/csv` (no lazy quotes).
pub(crate) fn csv_fields(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("extraneous or missing \" in quoted-field".into()),
                    Some('"') => match chars.peek() {
                        Some('"') => {
                            chars.next();
                            field.push('"');
                        }
                        Some(',') | None => break,
                        Some(_) => return Err("extraneous or missing \" in quoted-field".into()),
                    },
                    Some(c) => field.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '"' {
                    return Err("bare \" in non-quoted-field".into());
                }
                field.push(c);
                chars.next();
            }
        }
        out.push(field);
        match chars.next() {
            Some(',') => continue,
            _ => break,
        }
    }
    Ok(out)
}

/// Go's `strconv.ParseBool`.
pub(crate) fn go_parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.ParseUint(s, base, 32)` for plain digit strings (no sign, no prefix).
pub(crate) fn parse_u32(s: &str, base: u32) -> Option<u32> {
    if s.is_empty() || !s.chars().all(|c| c.is_digit(base)) {
        return None;
    }
    u32::from_str_radix(s, base).ok()
}

/// docker/go-units `RAMInBytes`: `64m`, `1.5GiB`, `1024` (binary multiples).
pub(crate) fn ram_in_bytes(s: &str) -> Option<i64> {
    let num_len = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map_or(s.len(), |(i, _)| i);
    let (num, rest) = s.split_at(num_len);
    let valid_num = {
        let mut parts = num.split('.');
        parts.next().is_some_and(|p| !p.is_empty()) && parts.all(|p| !p.is_empty())
    };
    if !valid_num {
        return None;
    }
    let value: f64 = num.parse().ok()?;
    let rest = rest.strip_prefix(' ').unwrap_or(rest);
    let mut it = rest.chars().peekable();
    let mult: f64 = match it.peek().map(|c| c.to_ascii_lowercase()) {
        Some('k') => 1024f64,
        Some('m') => 1024f64.powi(2),
        Some('g') => 1024f64.powi(3),
        Some('t') => 1024f64.powi(4),
        Some('p') => 1024f64.powi(5),
        _ => 1.0,
    };
    if mult > 1.0 {
        it.next();
    }
    if matches!(it.peek(), Some('i' | 'I')) {
        it.next();
    }
    if matches!(it.peek(), Some('b' | 'B')) {
        it.next();
    }
    if it.next().is_some() {
        return None;
    }
    Some((value * mult) as i64)
}

const MOUNT_KEYS: [&str; 19] = [
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "size",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
    "env",
];

/// Parses a `--mount` value. Without an expander only what BuildKit's instruction layer checks
/// is checked (the CSV syntax and a variable in `from=`); with one, every option is expanded
/// and checked as at conversion time.
pub fn parse_mount(raw: &str, mut expander: Option<MountExpander<'_>>) -> Result<Mount, String> {
    let fields = csv_fields(raw).map_err(|e| format!("failed to parse csv mounts: {e}"))?;
    let mut m = Mount {
        kind: MountType::Bind,
        from: None,
        source: None,
        target: None,
        readonly: false,
        size: None,
        id: None,
        sharing: None,
        required: false,
        env: None,
        mode: None,
        uid: None,
        gid: None,
    };
    let mut ro_auto = true;
    for field in fields {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (go_lower(k), Some(v.to_string())),
            None => (go_lower(&field), None),
        };
        let Some(value) = value else {
            if expander.is_none() {
                continue;
            }
            match key.as_str() {
                "readonly" | "ro" => {
                    m.readonly = true;
                    ro_auto = false;
                }
                "readwrite" | "rw" => {
                    m.readonly = false;
                    ro_auto = false;
                }
                "required" if matches!(m.kind, MountType::Secret | MountType::Ssh) => {
                    m.required = true
                }
                "required" => {
                    return Err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        type_name(m.kind)
                    ))
                }
                _ => return Err(format!("invalid field '{field}' must be a key=value pair")),
            }
            continue;
        };
        let value = match expander.as_mut() {
            Some(exp) => exp(&value)?,
            None if key == "from" => {
                if let Some(i) = value.find('$') {
                    if i != value.len() - 1 {
                        return Err(format!(
                            "'{key}' doesn't support variable expansion, define alias stage instead"
                        ));
                    }
                }
                continue;
            }
            None => continue,
        };
        // An unknown value (validation before the variables are known) skips its checks, but
        // the key itself must still be valid.
        let known = value.is_some();
        let value = value.unwrap_or_default();
        let bad = |k: &str| format!("invalid value for {k}: {value}");
        match key.as_str() {
            "type" if known => {
                m.kind = match go_lower(&value).as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => MountType::Ssh,
                    _ => {
                        return Err(with_suggestion(
                            format!("unsupported mount type {}", go_quote(&value)),
                            &value,
                            &["bind", "cache", "tmpfs", "secret", "ssh"],
                            true,
                        ))
                    }
                }
            }
            "from" => m.from = Some(value),
            "source" | "src" => m.source = Some(value),
            "target" | "dst" | "destination" => m.target = Some(value),
            "readonly" | "ro" if known => {
                m.readonly = go_parse_bool(&value).ok_or_else(|| bad(&key))?;
                ro_auto = false;
            }
            "readwrite" | "rw" if known => {
                m.readonly = !go_parse_bool(&value).ok_or_else(|| bad(&key))?;
                ro_auto = false;
            }
            "required" if known => {
                if !matches!(m.kind, MountType::Secret | MountType::Ssh) {
                    return Err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        type_name(m.kind)
                    ));
                }
                m.required = go_parse_bool(&value).ok_or_else(|| bad(&key))?;
            }
            "size" if known => {
                if m.kind != MountType::Tmpfs {
                    return Err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        type_name(m.kind)
                    ));
                }
                m.size = Some(ram_in_bytes(&value).ok_or_else(|| bad(&key))?);
            }
            "id" => m.id = Some(value),
            "sharing" if known => {
                m.sharing = Some(match go_lower(&value).as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    _ => {
                        return Err(with_suggestion(
                            format!("unsupported sharing value {}", go_quote(&value)),
                            &value,
                            &["shared", "private", "locked"],
                            true,
                        ))
                    }
                })
            }
            "mode" if known => {
                m.mode = Some(
                    parse_u32(&value, 8)
                        .ok_or_else(|| format!("invalid value {value} for mode"))?,
                )
            }
            "uid" if known => {
                m.uid = Some(
                    parse_u32(&value, 10)
                        .ok_or_else(|| format!("invalid value {value} for uid"))?,
                )
            }
            "gid" if known => {
                m.gid = Some(
                    parse_u32(&value, 10)
                        .ok_or_else(|| format!("invalid value {value} for gid"))?,
                )
            }
            "env" => m.env = Some(value),
            k if MOUNT_KEYS.contains(&k) => {}
            _ => {
                return Err(with_suggestion(
                    format!("unexpected key '{key}' in '{field}'"),
                    &key,
                    &MOUNT_KEYS,
                    true,
                ))
            }
        }
    }
    let file_info_allowed = matches!(
        m.kind,
        MountType::Secret | MountType::Ssh | MountType::Cache
    );
    if !file_info_allowed {
        let t = go_quote(type_name(m.kind));
        if m.mode.is_some() {
            return Err(format!("mode not allowed for {t} type mounts"));
        }
        if m.uid.is_some() {
            return Err(format!("uid not allowed for {t} type mounts"));
        }
        if m.gid.is_some() {
            return Err(format!("gid not allowed for {t} type mounts"));
        }
    }
    if ro_auto {
        m.readonly = !matches!(m.kind, MountType::Cache | MountType::Tmpfs);
    }
    let nonempty = |o: &Option<String>| o.as_deref().is_some_and(|s| !s.is_empty());
    if m.kind == MountType::Secret {
        if nonempty(&m.from) {
            return Err("secret mount should not have a from".into());
        }
        if m.sharing.is_some() {
            return Err("secret mount should not define sharing".into());
        }
        if !nonempty(&m.source) && !nonempty(&m.target) && !nonempty(&m.id) {
            return Err("invalid secret mount. one of source, target required".into());
        }
        if nonempty(&m.source) && nonempty(&m.id) {
            return Err("both source and id can't be set".into());
        }
    }
    if m.sharing.is_some() && m.kind != MountType::Cache {
        return Err(format!(
            "invalid cache sharing set for {} mount",
            type_name(m.kind)
        ));
    }
    Ok(m)
}

/// The mount as a canonical `--mount` value (`type=cache,target=/x,...`): the
/// fields that are set, in a fixed order, quoted like CSV where needed. Used
/// for progress lines and history, where the debug form would be noise.
impl std::fmt::Display for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut fields = vec![format!("type={}", type_name(self.kind))];
        let mut push = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                fields.push(csv_quote(&format!("{key}={v}")));
            }
        };
        push("from", self.from.clone());
        push("source", self.source.clone());
        push("target", self.target.clone());
        push("id", self.id.clone());
        push(
            "sharing",
            self.sharing.map(|s| {
                match s {
                    Sharing::Shared => "shared",
                    Sharing::Private => "private",
                    Sharing::Locked => "locked",
                }
                .to_string()
            }),
        );
        push("size", self.size.map(|s| s.to_string()));
        push("mode", self.mode.map(|m| format!("{m:04o}")));
        push("uid", self.uid.map(|u| u.to_string()));
        push("gid", self.gid.map(|g| g.to_string()));
        push("env", self.env.clone());
        if self.required {
            fields.push("required".into());
        }
        let readonly_by_default = matches!(
            self.kind,
            MountType::Bind | MountType::Secret | MountType::Ssh
        );
        if self.readonly != readonly_by_default {
            fields.push(if self.readonly { "ro" } else { "rw" }.into());
        }
        f.write_str(&fields.join(","))
    }
}

/// Quotes one CSV field the way [`csv_fields`] reads it back.
fn csv_quote(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

fn type_name(t: MountType) -> &'static str {
    match t {
        MountType::Bind => "bind",
        MountType::Cache => "cache",
        MountType::Tmpfs => "tmpfs",
        MountType::Secret => "secret",
        MountType::Ssh => "ssh",
    }
}

/// Checks a `RUN --device` value as BuildKit's instruction layer does.
pub(crate) fn parse_device(raw: &str) -> Result<(), String> {
    let fields = csv_fields(raw).map_err(|e| format!("failed to parse csv devices: {e}"))?;
    let mut name = String::new();
    for field in fields {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (go_lower(k), Some(v)),
            None => (go_lower(&field), None),
        };
        match (key.as_str(), value) {
            ("required", None) => {}
            (_, None) if name.is_empty() => name = field.clone(),
            (_, None) => return Err(format!("invalid field '{field}' must be a key=value pair")),
            ("name", Some(v)) => {
                if !name.is_empty() {
                    return Err(format!("device name already set to {name}"));
                }
                name = v.to_string();
            }
            ("required", Some(v)) => {
                go_parse_bool(v).ok_or_else(|| format!("invalid value for required: {v}"))?;
            }
            _ if name.is_empty() => name = field.clone(),
            _ => {
                return Err(with_suggestion(
                    format!("unexpected key '{key}' in '{field}'"),
                    &key,
                    &["name", "required"],
                    true,
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(raw: &str) -> Result<Mount, String> {
        let mut id = |v: &str| Ok(Some(v.to_string()));
        parse_mount(raw, Some(&mut id))
    }

    #[test]
    fn display_is_a_canonical_value_that_parses_back() {
        for (raw, shown) in [
            (
                "target=/root/.cache,type=cache,sharing=locked,mode=0755,uid=1",
                "type=cache,target=/root/.cache,sharing=locked,mode=0755,uid=1",
            ),
            ("type=bind,src=.,dst=/ctx", "type=bind,source=.,target=/ctx"),
            ("type=bind,target=/x,rw", "type=bind,target=/x,rw"),
            ("type=cache,target=/c,ro=true", "type=cache,target=/c,ro"),
            (
                "type=secret,id=tok,required,env=TOKEN",
                "type=secret,id=tok,env=TOKEN,required",
            ),
            (
                "type=tmpfs,target=/t,size=1024",
                "type=tmpfs,target=/t,size=1024",
            ),
            ("type=bind,\"target=/a,b\"", "type=bind,\"target=/a,b\""),
        ] {
            let m = full(raw).unwrap();
            assert_eq!(m.to_string(), shown, "{raw}");
            assert_eq!(full(shown).unwrap(), m, "{shown}");
        }
    }

    #[test]
    fn cache_mount() {
        let m = full("type=cache,target=/root/.cache,sharing=locked,mode=0755,uid=1").unwrap();
        assert_eq!(m.kind, MountType::Cache);
        assert_eq!(m.target.as_deref(), Some("/root/.cache"));
        assert_eq!(m.sharing, Some(Sharing::Locked));
        assert_eq!(m.mode, Some(0o755));
        assert!(!m.readonly);
    }

    #[test]
    fn mount_errors() {
        assert_eq!(
            full("type=bind,mode=0755").unwrap_err(),
            "mode not allowed for \"bind\" type mounts"
        );
        assert!(full("type=secret").is_err());
        assert!(parse_mount("from=$x,target=/a", None).is_err());
        assert!(parse_mount("from=x$,target=/a", None).is_ok());
    }

    #[test]
    fn sizes_and_csv() {
        assert_eq!(ram_in_bytes("64m"), Some(64 << 20));
        assert_eq!(ram_in_bytes("1.5GiB"), Some(3 << 29));
        assert_eq!(ram_in_bytes("abc"), None);
        assert_eq!(csv_fields("a,\"b,c\",d").unwrap(), vec!["a", "b,c", "d"]);
        assert!(csv_fields("a\"b").is_err());
    }
}
