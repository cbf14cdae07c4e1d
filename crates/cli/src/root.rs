//! Where the image store lives: the one place that turns `--root`, the
//! environment and the user's identity into a store directory.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Result};

/// The inputs that choose the store root, gathered from the process so the
/// choice itself is a pure function that tests can drive.
#[derive(Debug, Default, Clone)]
pub struct RootInputs {
    /// `--root DIR` from the command line.
    pub flag: Option<PathBuf>,
    /// `RBUILD_ROOT`.
    pub rbuild_root: Option<OsString>,
    /// `XDG_DATA_HOME`.
    pub xdg_data_home: Option<OsString>,
    /// `HOME`.
    pub home: Option<OsString>,
    /// Whether the effective user is root.
    pub is_root: bool,
}

impl RootInputs {
    /// Reads the environment and the effective uid of this process.
    pub fn from_env(flag: Option<PathBuf>) -> RootInputs {
        RootInputs {
            flag,
            rbuild_root: std::env::var_os("RBUILD_ROOT"),
            xdg_data_home: std::env::var_os("XDG_DATA_HOME"),
            home: std::env::var_os("HOME"),
            // SAFETY: geteuid has no preconditions and cannot fail.
            is_root: unsafe { libc::geteuid() } == 0,
        }
    }
}

/// Picks the store root: `--root`, else `RBUILD_ROOT`, else
/// `$XDG_DATA_HOME/rbuild`, else `/var/lib/rbuild` for root, else
/// `~/.local/share/rbuild`. Empty variables count as unset, as the XDG base
/// directory specification asks.
pub fn resolve(inputs: &RootInputs) -> Result<PathBuf> {
    fn non_empty(v: &Option<OsString>) -> Option<PathBuf> {
        v.as_ref().filter(|s| !s.is_empty()).map(PathBuf::from)
    }
    if let Some(flag) = &inputs.flag {
        if flag.as_os_str().is_empty() {
            bail!("--root needs a directory");
        }
        return Ok(flag.clone());
    }
    if let Some(dir) = non_empty(&inputs.rbuild_root) {
        return Ok(dir);
    }
    // The XDG specification ignores relative values of XDG_DATA_HOME.
    if let Some(dir) = non_empty(&inputs.xdg_data_home).filter(|d| d.is_absolute()) {
        return Ok(dir.join("rbuild"));
    }
    if inputs.is_root {
        return Ok(PathBuf::from("/var/lib/rbuild"));
    }
    match non_empty(&inputs.home) {
        Some(home) => Ok(home.join(".local/share/rbuild")),
        None => bail!(
            "cannot choose a store directory: HOME is not set; pass --root DIR or set RBUILD_ROOT"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> RootInputs {
        RootInputs {
            flag: None,
            rbuild_root: Some("/env/root".into()),
            xdg_data_home: Some("/xdg".into()),
            home: Some("/home/u".into()),
            is_root: true,
        }
    }

    #[test]
    fn flag_wins_over_everything() {
        let i = RootInputs {
            flag: Some("/flag".into()),
            ..inputs()
        };
        assert_eq!(resolve(&i).unwrap(), PathBuf::from("/flag"));
    }

    #[test]
    fn rbuild_root_before_xdg() {
        assert_eq!(resolve(&inputs()).unwrap(), PathBuf::from("/env/root"));
    }

    #[test]
    fn xdg_before_var_lib_for_root() {
        let i = RootInputs {
            rbuild_root: None,
            ..inputs()
        };
        assert_eq!(resolve(&i).unwrap(), PathBuf::from("/xdg/rbuild"));
    }

    #[test]
    fn root_user_uses_var_lib() {
        let i = RootInputs {
            rbuild_root: Some("".into()),
            xdg_data_home: None,
            ..inputs()
        };
        assert_eq!(resolve(&i).unwrap(), PathBuf::from("/var/lib/rbuild"));
    }

    #[test]
    fn relative_xdg_is_ignored() {
        let i = RootInputs {
            rbuild_root: None,
            xdg_data_home: Some("rel/data".into()),
            ..inputs()
        };
        assert_eq!(resolve(&i).unwrap(), PathBuf::from("/var/lib/rbuild"));
    }

    #[test]
    fn other_users_use_home() {
        let i = RootInputs {
            rbuild_root: None,
            xdg_data_home: None,
            is_root: false,
            ..inputs()
        };
        assert_eq!(
            resolve(&i).unwrap(),
            PathBuf::from("/home/u/.local/share/rbuild")
        );
        let no_home = RootInputs { home: None, ..i };
        assert!(resolve(&no_home).is_err());
    }
}
