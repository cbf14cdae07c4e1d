//! The image configuration a stage builds up, instruction by instruction:
//! the effect of every metadata instruction (ENV, LABEL, CMD, EXPOSE, ...)
//! and the history text (`created_by`) BuildKit writes for each step.
//!
//! [`StageConfig`] wraps the image crate's `ContainerConfig` with the
//! little state only the solver needs.

use rbuild_image::config::EmptyObject;
use rbuild_image::{ContainerConfig, Healthcheck as ImageHealthcheck};
use rbuild_parser::{Healthcheck, Instruction};

/// Docker's default PATH, set in every stage whose base image has none (as
/// BuildKit does, so `FROM scratch` images carry it too).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The default SHELL.
pub fn default_shell() -> Vec<String> {
    vec!["/bin/sh".to_string(), "-c".to_string()]
}

/// The container config of a stage as it evolves, plus what the image
/// config keeps outside `config` (the author) and what only the solver
/// needs (whether CMD was set in this stage).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageConfig {
    /// The container config (Env, Cmd, WorkingDir, ...).
    pub config: ContainerConfig,
    /// MAINTAINER (the image's author).
    pub author: Option<String>,
    /// Whether CMD was set in this stage (ENTRYPOINT clears an inherited
    /// CMD only).
    pub cmd_set: bool,
}

impl StageConfig {
    /// Starts a stage from its base's config: PATH defaulted, ONBUILD
    /// triggers taken out (returned, to run first and not be inherited),
    /// CMD marked inherited.
    pub fn start(base: ContainerConfig, author: Option<String>) -> (StageConfig, Vec<String>) {
        let mut config = base;
        if config.env_get("PATH").is_none() {
            config.env.push(format!("PATH={DEFAULT_PATH}"));
        }
        let triggers = std::mem::take(&mut config.on_build);
        (
            StageConfig {
                config,
                author,
                cmd_set: false,
            },
            triggers,
        )
    }

    /// The shell for shell-form commands.
    pub fn shell(&self) -> Vec<String> {
        if self.config.shell.is_empty() {
            default_shell()
        } else {
            self.config.shell.clone()
        }
    }

    /// The working directory, `/` when unset.
    pub fn workdir(&self) -> &str {
        if self.config.working_dir.is_empty() {
            "/"
        } else {
            &self.config.working_dir
        }
    }

    /// Applies a metadata instruction (ENV, LABEL, MAINTAINER, EXPOSE,
    /// VOLUME, USER, STOPSIGNAL, SHELL, ONBUILD, CMD, ENTRYPOINT,
    /// HEALTHCHECK), already expanded. Returns the step text and the
    /// history `created_by` BuildKit writes, or `None` for an instruction
    /// that is not metadata.
    pub fn apply_meta(&mut self, inst: &Instruction) -> Result<Option<(String, String)>, String> {
        Ok(match inst {
            Instruction::Env(kvs) => {
                let mut parts = Vec::new();
                for kv in kvs {
                    self.config.env_set(&kv.key, &kv.value);
                    parts.push(format!("{}={}", kv.key, kv.value));
                }
                let t = format!("ENV {}", parts.join(" "));
                Some((t.clone(), t))
            }
            Instruction::Label(kvs) => {
                let mut parts = Vec::new();
                for kv in kvs {
                    self.config.labels.insert(kv.key.clone(), kv.value.clone());
                    parts.push(format!("{}={}", kv.key, kv.value));
                }
                let t = format!("LABEL {}", parts.join(" "));
                Some((t.clone(), t))
            }
            Instruction::Maintainer(m) => {
                self.author = Some(m.clone());
                let t = format!("MAINTAINER {m}");
                Some((t.clone(), t))
            }
            Instruction::Expose(ports) => {
                self.expose(ports)?;
                let t = format!("EXPOSE {}", ports.join(" "));
                let list: Vec<String> = self
                    .config
                    .exposed_ports
                    .keys()
                    .map(|p| format!("{p}:{{}}"))
                    .collect();
                Some((t, format!("EXPOSE map[{}]", list.join(" "))))
            }
            Instruction::Volume(v) => {
                self.add_volumes(v);
                let t = format!("VOLUME {}", go_plain_list(v));
                Some((t.clone(), t))
            }
            Instruction::User(u) => {
                self.config.user = u.clone();
                let t = format!("USER {u}");
                Some((t.clone(), t))
            }
            Instruction::StopSignal(s) => {
                self.config.stop_signal = s.clone();
                let t = format!("STOPSIGNAL {s}");
                Some((t.clone(), t))
            }
            Instruction::Shell(sh) => {
                self.config.shell = sh.clone();
                let t = format!("SHELL {}", go_plain_list(sh));
                Some((t.clone(), t))
            }
            Instruction::Onbuild(o) => {
                self.config.on_build.push(o.expression.clone());
                let t = format!("ONBUILD {}", o.expression);
                Some((t.clone(), t))
            }
            Instruction::Cmd(c) | Instruction::Entrypoint(c) => {
                let is_cmd = matches!(inst, Instruction::Cmd(_));
                let args = if c.prepend_shell && !c.args.is_empty() {
                    let mut a = self.shell();
                    a.extend(c.args.iter().cloned());
                    a
                } else {
                    c.args.clone()
                };
                let word = if is_cmd { "CMD" } else { "ENTRYPOINT" };
                let created = format!("{word} {}", go_quoted_list(&args));
                if is_cmd {
                    self.set_cmd(args);
                } else {
                    self.set_entrypoint(args);
                }
                Some((created.clone(), created))
            }
            Instruction::Healthcheck(h) => {
                let hc = match h {
                    Healthcheck::None => ImageHealthcheck {
                        test: vec!["NONE".into()],
                        ..Default::default()
                    },
                    Healthcheck::Cmd(c) => {
                        let ns = |d: Option<std::time::Duration>| {
                            d.map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                        };
                        ImageHealthcheck {
                            test: c.test.clone(),
                            interval: ns(c.interval),
                            timeout: ns(c.timeout),
                            start_period: ns(c.start_period),
                            start_interval: ns(c.start_interval),
                            retries: c.retries.map_or(0, i64::from),
                        }
                    }
                };
                let t = format!("HEALTHCHECK {}", go_quoted_list(&hc.test));
                self.config.healthcheck = Some(hc);
                Some((t.clone(), t))
            }
            _ => None,
        })
    }

    /// CMD.
    pub fn set_cmd(&mut self, args: Vec<String>) {
        self.config.cmd = Some(args);
        self.cmd_set = true;
    }

    /// ENTRYPOINT; clears a CMD inherited from the base image, keeps one set
    /// earlier in this stage.
    pub fn set_entrypoint(&mut self, args: Vec<String>) {
        self.config.entrypoint = Some(args);
        if !self.cmd_set {
            self.config.cmd = None;
        }
    }

    /// WORKDIR: relative paths are joined with the current one; the result
    /// is cleaned. Returns the new absolute path.
    pub fn set_workdir(&mut self, path: &str) -> String {
        let joined = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{}/{}", self.workdir(), path)
        };
        self.config.working_dir = rbuild_executor::pathmatch::clean(&joined);
        self.config.working_dir.clone()
    }

    /// EXPOSE: adds normalised ports (`80` → `80/tcp`, ranges expanded).
    pub fn expose(&mut self, specs: &[String]) -> Result<(), String> {
        for spec in specs {
            for p in normalize_port(spec)? {
                self.config.exposed_ports.insert(p, EmptyObject);
            }
        }
        Ok(())
    }

    /// VOLUME.
    pub fn add_volumes(&mut self, paths: &[String]) {
        for p in paths {
            self.config.volumes.insert(p.clone(), EmptyObject);
        }
    }
}

/// `80` → `["80/tcp"]`, `53/UDP` → `["53/udp"]`, `8000-8002` → three ports.
pub fn normalize_port(spec: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = match spec.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid proto: {proto}"));
    }
    let parse = |s: &str| -> Result<u32, String> {
        s.parse::<u32>()
            .ok()
            .filter(|p| *p <= 65535)
            .ok_or_else(|| format!("invalid containerPort: {ports}"))
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let p = parse(ports)?;
            (p, p)
        }
    };
    if hi < lo {
        return Err(format!(
            "invalid range specified for container port: {ports}"
        ));
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// Go's `%q` of a string slice (`["a" "b"]`), the way BuildKit's history
/// prints CMD and ENTRYPOINT.
pub fn go_quoted_list(args: &[String]) -> String {
    let items: Vec<String> = args
        .iter()
        .map(|a| serde_json::to_string(a).unwrap_or_default())
        .collect();
    format!("[{}]", items.join(" "))
}

/// Go's `%v` of a string slice (`[a b]`), as BuildKit prints SHELL, VOLUME.
pub fn go_plain_list(args: &[String]) -> String {
    format!("[{}]", args.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_normalise() {
        assert_eq!(normalize_port("80").unwrap(), vec!["80/tcp"]);
        assert_eq!(normalize_port("53/UDP").unwrap(), vec!["53/udp"]);
        assert_eq!(
            normalize_port("8000-8002").unwrap(),
            vec!["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert!(normalize_port("x").is_err());
        assert!(normalize_port("80/foo").is_err());
        assert!(normalize_port("70000").is_err());
    }

    #[test]
    fn workdir_joins_and_cleans() {
        let mut c = StageConfig::default();
        assert_eq!(c.set_workdir("app"), "/app");
        assert_eq!(c.set_workdir("sub/../x/"), "/app/x");
        assert_eq!(c.set_workdir("/abs//y/."), "/abs/y");
        assert_eq!(c.set_workdir("../../.."), "/");
    }

    #[test]
    fn entrypoint_clears_only_inherited_cmd() {
        let base = ContainerConfig {
            cmd: Some(vec!["sh".into()]),
            on_build: vec!["RUN x".into()],
            ..Default::default()
        };
        let (mut c, triggers) = StageConfig::start(base.clone(), None);
        assert_eq!(triggers, vec!["RUN x"]);
        assert!(c.config.on_build.is_empty());
        assert!(c.config.env[0].starts_with("PATH="));
        c.set_entrypoint(vec!["/app".into()]);
        assert_eq!(c.config.cmd, None);

        let (mut c, _) = StageConfig::start(base, None);
        c.set_cmd(vec!["--help".into()]);
        c.set_entrypoint(vec!["/app".into()]);
        assert_eq!(c.config.cmd, Some(vec!["--help".to_string()]));
    }

    #[test]
    fn history_lists_like_go() {
        let v = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            "echo \"hi\"".to_string(),
        ];
        assert_eq!(go_quoted_list(&v), r#"["/bin/sh" "-c" "echo \"hi\""]"#);
        assert_eq!(go_plain_list(&v[..2]), "[/bin/sh -c]");
    }
}
