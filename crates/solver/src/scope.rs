//! Build-arg and environment scoping, as BuildKit does it.
//!
//! - ARGs before the first FROM are global ([`GlobalScope`]): usable in FROM
//!   lines only. Their defaults are expanded with the global args declared
//!   before them and the predefined platform args.
//! - Inside a stage an ARG must be declared ([`StageScope`]); `ARG NAME`
//!   without a default picks up the global value of the same name.
//!   `--build-arg` overrides any default.
//! - ENV shadows an ARG of the same name; ARG values never enter the image's
//!   Env, but they are in RUN's environment and in the cache keys.
//! - Proxy args (`HTTP_PROXY`, ...) given as build args reach RUN without a
//!   declaration and, as in Docker, stay out of the cache key.
//!
//! This module does no expansion itself: it supplies the variables, and the
//! parser's lexer expands with them.

use std::collections::{BTreeMap, BTreeSet};

use crate::request::Platform;

/// Build args every RUN may see without an `ARG` line (Docker's
/// "predefined args"), in both cases.
pub const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Whether `name` is a predefined proxy arg.
pub fn is_proxy_arg(name: &str) -> bool {
    PROXY_ARGS.contains(&name)
}

/// The automatic platform args, defined in the global scope (so a stage
/// must declare `ARG TARGETARCH` to see it, as in BuildKit).
pub fn platform_args(target: &Platform, build: &Platform) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for (prefix, p) in [("TARGET", target), ("BUILD", build)] {
        m.insert(format!("{prefix}PLATFORM"), p.to_string());
        m.insert(format!("{prefix}OS"), p.os.clone());
        m.insert(format!("{prefix}ARCH"), p.architecture.clone());
        m.insert(format!("{prefix}VARIANT"), p.variant.clone());
    }
    m
}

/// The command line's build args and which of them some ARG consumed.
#[derive(Debug, Clone, Default)]
pub struct BuildArgs {
    values: BTreeMap<String, String>,
    used: BTreeSet<String>,
}

impl BuildArgs {
    /// Wraps `--build-arg` values.
    pub fn new(values: BTreeMap<String, String>) -> BuildArgs {
        BuildArgs {
            values,
            used: BTreeSet::new(),
        }
    }

    /// The value given for `name`, marking it consumed.
    fn take(&mut self, name: &str) -> Option<String> {
        let v = self.values.get(name).cloned();
        if v.is_some() {
            self.used.insert(name.to_string());
        }
        v
    }

    /// Proxy args given on the command line (for RUN's environment).
    pub fn proxies(&self) -> impl Iterator<Item = (&String, &String)> {
        self.values.iter().filter(|(k, _)| is_proxy_arg(k))
    }

    /// Build args no ARG of the built stages consumed (proxy args excepted),
    /// for Docker's "were not consumed" warning.
    pub fn unused(&self) -> Vec<String> {
        self.values
            .keys()
            .filter(|k| !self.used.contains(*k) && !is_proxy_arg(k))
            .cloned()
            .collect()
    }
}

/// Global ARGs (declared before the first FROM) plus the platform args.
#[derive(Debug, Clone)]
pub struct GlobalScope {
    platform: BTreeMap<String, String>,
    /// Declared global args, `None` when declared without a value.
    args: BTreeMap<String, Option<String>>,
}

impl GlobalScope {
    /// A scope holding only the platform args.
    pub fn new(platform: BTreeMap<String, String>) -> GlobalScope {
        GlobalScope {
            platform,
            args: BTreeMap::new(),
        }
    }

    /// Declares a global ARG; `default` must already be expanded with
    /// [`GlobalScope::vars`]. A build arg of that name overrides it.
    pub fn declare(&mut self, name: &str, default: Option<String>, build_args: &mut BuildArgs) {
        let value = build_args.take(name).or(default);
        self.args.insert(name.to_string(), value);
    }

    /// The variables FROM lines (and global defaults) are expanded with.
    pub fn vars(&self) -> BTreeMap<String, String> {
        let mut m = self.platform.clone();
        for (k, v) in &self.args {
            if let Some(v) = v {
                m.insert(k.clone(), v.clone());
            }
        }
        m
    }

    /// The global value an in-stage `ARG name` (without default) picks up.
    fn value(&self, name: &str) -> Option<String> {
        match self.args.get(name) {
            Some(v) => v.clone(),
            None => self.platform.get(name).cloned(),
        }
    }
}

/// The ARGs declared in one stage so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageScope {
    /// Declared args, `None` when declared without any value.
    args: BTreeMap<String, Option<String>>,
}

impl StageScope {
    /// Declares an ARG in the stage; `default` must already be expanded with
    /// [`StageScope::vars`]. Returns the value it takes (build arg, else the
    /// default, else the global value of the same name), for the history
    /// entry `ARG NAME=value`.
    pub fn declare(
        &mut self,
        name: &str,
        default: Option<String>,
        global: &GlobalScope,
        build_args: &mut BuildArgs,
    ) -> Option<String> {
        let value = match build_args.take(name) {
            Some(v) => Some(v),
            None => default.or_else(|| global.value(name)),
        };
        self.args.insert(name.to_string(), value.clone());
        value
    }

    /// The variables instructions of the stage are expanded with: the args
    /// that have values, shadowed by the image's ENV (`KEY=VALUE` entries).
    pub fn vars(&self, env: &[String]) -> BTreeMap<String, String> {
        let mut m = self.args();
        for (k, v) in env.iter().filter_map(|e| e.split_once('=')) {
            m.insert(k.to_string(), v.to_string());
        }
        m
    }

    /// The args that have values (what a step's cache key includes).
    pub fn args(&self) -> BTreeMap<String, String> {
        self.args
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
            .collect()
    }

    /// RUN's environment: the image's ENV in order, then the args not
    /// shadowed by it, then proxy build args not declared in the stage.
    pub fn run_env(&self, env: &[String], build_args: &BuildArgs) -> Vec<String> {
        let mut out: Vec<String> = env.to_vec();
        let env_names: BTreeSet<&str> = env
            .iter()
            .map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k))
            .collect();
        for (k, v) in self.args() {
            if !env_names.contains(k.as_str()) {
                out.push(format!("{k}={v}"));
            }
        }
        for (k, v) in build_args.proxies() {
            if !env_names.contains(k.as_str()) && !self.args.contains_key(k) {
                out.push(format!("{k}={v}"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform() -> Platform {
        Platform::parse("linux/amd64").unwrap()
    }

    fn globals(decls: &[(&str, Option<&str>)], args: &mut BuildArgs) -> GlobalScope {
        let mut g = GlobalScope::new(platform_args(&platform(), &platform()));
        for (n, d) in decls {
            g.declare(n, d.map(str::to_string), args);
        }
        g
    }

    fn ba(pairs: &[(&str, &str)]) -> BuildArgs {
        BuildArgs::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// One row: global declarations, build args, stage declarations, stage
    /// ENV, and the expected expansion variables.
    struct Case {
        name: &'static str,
        global: &'static [(&'static str, Option<&'static str>)],
        build_args: &'static [(&'static str, &'static str)],
        stage: &'static [(&'static str, Option<&'static str>)],
        env: &'static [&'static str],
        expect: &'static [(&'static str, Option<&'static str>)],
    }

    const CASES: &[Case] = &[
        Case {
            name: "global arg is not visible in a stage without redeclaring",
            global: &[("V", Some("1"))],
            build_args: &[],
            stage: &[],
            env: &[],
            expect: &[("V", None)],
        },
        Case {
            name: "redeclared without default picks up the global value",
            global: &[("V", Some("1"))],
            build_args: &[],
            stage: &[("V", None)],
            env: &[],
            expect: &[("V", Some("1"))],
        },
        Case {
            name: "redeclared global takes the build arg",
            global: &[("V", Some("1"))],
            build_args: &[("V", "9")],
            stage: &[("V", None)],
            env: &[],
            expect: &[("V", Some("9"))],
        },
        Case {
            name: "stage default overrides the global value",
            global: &[("V", Some("1"))],
            build_args: &[],
            stage: &[("V", Some("2"))],
            env: &[],
            expect: &[("V", Some("2"))],
        },
        Case {
            name: "build arg overrides a stage default",
            global: &[],
            build_args: &[("V", "9")],
            stage: &[("V", Some("2"))],
            env: &[],
            expect: &[("V", Some("9"))],
        },
        Case {
            name: "undeclared build arg is invisible",
            global: &[],
            build_args: &[("V", "9")],
            stage: &[],
            env: &[],
            expect: &[("V", None)],
        },
        Case {
            name: "declared without any value is unset",
            global: &[],
            build_args: &[],
            stage: &[("V", None)],
            env: &[],
            expect: &[("V", None)],
        },
        Case {
            name: "ENV shadows ARG",
            global: &[],
            build_args: &[("V", "9")],
            stage: &[("V", Some("2"))],
            env: &["V=env"],
            expect: &[("V", Some("env"))],
        },
        Case {
            name: "platform args need a declaration",
            global: &[],
            build_args: &[],
            stage: &[("TARGETARCH", None)],
            env: &[],
            expect: &[("TARGETARCH", Some("amd64")), ("TARGETOS", None)],
        },
    ];

    #[test]
    fn scoping_table() {
        for c in CASES {
            let mut args = ba(c.build_args);
            let g = globals(c.global, &mut args);
            let mut s = StageScope::default();
            for (n, d) in c.stage {
                s.declare(n, d.map(str::to_string), &g, &mut args);
            }
            let env: Vec<String> = c.env.iter().map(|e| e.to_string()).collect();
            let vars = s.vars(&env);
            for (n, v) in c.expect {
                assert_eq!(vars.get(*n).map(String::as_str), *v, "{}: {n}", c.name);
            }
        }
    }

    #[test]
    fn from_lines_see_globals_and_platform_args() {
        let mut args = ba(&[("TAG", "2"), ("OTHER", "x")]);
        let g = globals(&[("TAG", Some("1")), ("NOVAL", None)], &mut args);
        let v = g.vars();
        assert_eq!(v["TAG"], "2");
        assert_eq!(v["TARGETPLATFORM"], "linux/amd64");
        assert_eq!(v["BUILDARCH"], "amd64");
        assert!(!v.contains_key("NOVAL"));
        // A build arg not declared globally is not usable in FROM.
        assert!(!v.contains_key("OTHER"));
        assert_eq!(args.unused(), vec!["OTHER".to_string()]);
    }

    #[test]
    fn run_env_has_args_but_env_wins_and_proxies_pass() {
        let mut args = ba(&[("A", "1"), ("HTTP_PROXY", "http://p"), ("B", "b")]);
        let g = globals(&[], &mut args);
        let mut s = StageScope::default();
        s.declare("A", None, &g, &mut args);
        s.declare("B", None, &g, &mut args);
        let env = vec!["PATH=/bin".to_string(), "B=env".to_string()];
        assert_eq!(
            s.run_env(&env, &args),
            vec!["PATH=/bin", "B=env", "A=1", "HTTP_PROXY=http://p"]
        );
        // Proxies are not part of the key's args, and never "unused".
        assert!(!s.args().contains_key("HTTP_PROXY"));
        assert!(args.unused().is_empty());
    }
}
