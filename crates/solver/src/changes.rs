//! Dockerfile instructions applied to an existing image config, as
//! `docker import --change` does: CMD, ENTRYPOINT, ENV, EXPOSE,
//! HEALTHCHECK, LABEL, ONBUILD, USER, VOLUME and WORKDIR, with the same
//! effect they have in a Dockerfile (words expanded against the config's
//! own ENV).

use rbuild_image::ImageConfig;
use rbuild_parser::Instruction;

use crate::config::StageConfig;

/// A `--change` that cannot be applied.
#[derive(Debug, thiserror::Error)]
#[error("invalid change {change:?}: {message}")]
pub struct ChangeError {
    /// The change as given.
    pub change: String,
    /// What is wrong with it.
    pub message: String,
}

/// Applies `changes` (one Dockerfile instruction each) to `config` in
/// order. Nothing is changed when one of them is invalid.
pub fn apply_changes(config: &mut ImageConfig, changes: &[String]) -> Result<(), ChangeError> {
    let mut stage = StageConfig {
        config: config.config.clone(),
        author: config.author.clone(),
        cmd_set: config.config.cmd.is_some(),
    };
    for change in changes {
        let fail = |message: String| ChangeError {
            change: change.clone(),
            message,
        };
        // The parser wants a stage; the FROM line is not part of the change.
        let df = rbuild_parser::parse(&format!("FROM scratch\n{change}\n"))
            .map_err(|e| fail(e.message))?;
        let [_, inst] = df.instructions.as_slice() else {
            return Err(fail("expected exactly one instruction".into()));
        };
        let allowed = matches!(
            inst.value,
            Instruction::Cmd(_)
                | Instruction::Entrypoint(_)
                | Instruction::Env(_)
                | Instruction::Expose(_)
                | Instruction::Healthcheck(_)
                | Instruction::Label(_)
                | Instruction::Onbuild(_)
                | Instruction::User(_)
                | Instruction::Volume(_)
                | Instruction::Workdir(_)
        );
        if !allowed {
            return Err(fail(format!(
                "{} is not a valid change command",
                inst.value.name()
            )));
        }
        let vars = stage
            .config
            .env
            .iter()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<std::collections::BTreeMap<_, _>>();
        let expanded = inst
            .value
            .expand(&vars, df.escape)
            .map_err(|e| fail(e.to_string()))?;
        if let Instruction::Workdir(w) = &expanded.instruction {
            stage.set_workdir(w);
        } else {
            stage.apply_meta(&expanded.instruction).map_err(fail)?;
        }
    }
    config.config = stage.config;
    config.author = stage.author;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed(changes: &[&str]) -> Result<ImageConfig, ChangeError> {
        let mut c = ImageConfig::new("linux", "amd64", None);
        c.config.env = vec!["HOME=/root".into()];
        let changes: Vec<String> = changes.iter().map(|s| s.to_string()).collect();
        apply_changes(&mut c, &changes)?;
        Ok(c)
    }

    #[test]
    fn changes_act_as_in_a_dockerfile() {
        let c = changed(&[
            "ENV APP=$HOME/app",
            "WORKDIR $APP",
            "WORKDIR sub",
            "CMD echo hi",
            "ENTRYPOINT [\"/bin/tini\"]",
            "EXPOSE 80 53/udp",
            "LABEL a=b",
            "USER 1000:1000",
            "VOLUME /data",
            "ONBUILD RUN make",
            "HEALTHCHECK --interval=5s CMD true",
        ])
        .unwrap();
        let cc = &c.config;
        assert_eq!(cc.env, ["HOME=/root", "APP=/root/app"]);
        assert_eq!(cc.working_dir, "/root/app/sub");
        // CMD set by a change survives a later ENTRYPOINT change.
        assert_eq!(cc.cmd.as_deref().unwrap(), ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(cc.entrypoint.as_deref().unwrap(), ["/bin/tini"]);
        assert_eq!(
            cc.exposed_ports.keys().collect::<Vec<_>>(),
            ["53/udp", "80/tcp"]
        );
        assert_eq!(cc.labels["a"], "b");
        assert_eq!(cc.user, "1000:1000");
        assert!(cc.volumes.contains_key("/data"));
        assert_eq!(cc.on_build, ["RUN make"]);
        assert_eq!(cc.healthcheck.as_ref().unwrap().interval, 5_000_000_000);
    }

    #[test]
    fn build_instructions_and_bad_lines_are_refused() {
        for bad in [
            "RUN true",
            "COPY a /b",
            "FROM x",
            "ARG A",
            "BOGUS x",
            "ENV",
            "",
        ] {
            let err = changed(&[bad]).unwrap_err();
            assert_eq!(err.change, bad);
        }
        let err = changed(&["RUN true"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("RUN is not a valid change command"),
            "{err}"
        );
    }
}
