//! One test per error kind, plus spans, rendering and expansion of typed instructions.

use rbuild_parser::{
    env_from_pairs, parse, parse_bytes, parse_nodes, ErrorKind, Instruction, MountType, NoEnv,
    ParseError,
};

fn err(text: &str) -> ParseError {
    parse(text).expect_err("must be rejected")
}

#[test]
fn unknown_instruction() {
    let e = err("FROM scratch\n\n  FROBNICATE x\n");
    assert_eq!(e.kind, ErrorKind::UnknownInstruction);
    assert_eq!(e.to_string(), "3:3: unknown instruction: FROBNICATE");
    assert_eq!(
        err("FROM scratch\nCOPPY a b\n").message,
        "unknown instruction: COPPY (did you mean COPY?)"
    );
}

#[test]
fn missing_arguments() {
    for (text, msg) in [
        ("FROM scratch\nWORKDIR\n", "WORKDIR requires exactly one argument"),
        ("FROM scratch\nCOPY a\n", "COPY requires at least two arguments, but only one was provided. Destination could not be determined"),
        ("FROM\n", "FROM requires either one or three arguments"),
        ("FROM scratch\nEXPOSE\n", "EXPOSE requires at least one argument"),
    ] {
        let e = err(text);
        assert_eq!(e.kind, ErrorKind::Arguments, "{text}");
        assert_eq!(e.message, msg);
    }
    let e = parse_nodes("FROM scratch\nENV PATH\n").expect_err("ENV without value");
    assert_eq!(
        (e.line, e.message.as_str()),
        (2, "ENV must have two arguments")
    );
}

#[test]
fn unknown_and_malformed_flags() {
    for (text, msg) in [
        ("FROM scratch\nCOPY --bogus a b\n", "unknown flag: --bogus"),
        (
            "FROM scratch\nCOPY --lnk a b\n",
            "unknown flag: --lnk (did you mean link?)",
        ),
        (
            "FROM scratch\nCOPY --link=maybe a b\n",
            "expecting boolean value for flag --link, not: maybe",
        ),
        (
            "FROM scratch\nCOPY --from a b\n",
            "missing a value on flag: --from",
        ),
        (
            "FROM scratch\nCOPY --from=a --from=b a b\n",
            "duplicate flag specified: --from",
        ),
        (
            "FROM scratch\nRUN --network=bridge true\n",
            "invalid network mode \"bridge\"",
        ),
        (
            "FROM scratch\nHEALTHCHECK --interval=10 CMD true\n",
            "time: missing unit in duration \"10\"",
        ),
    ] {
        let e = err(text);
        assert_eq!(e.kind, ErrorKind::Flag, "{text}");
        assert_eq!(e.message, msg);
        assert_eq!(e.line, 2);
    }
}

#[test]
fn unterminated_heredoc() {
    let e = err("FROM scratch\nRUN <<EOF\necho hi\n");
    assert_eq!(e.kind, ErrorKind::Heredoc);
    assert_eq!((e.line, e.end_line), (2, 3));
    assert_eq!(e.message, "unterminated heredoc");
}

#[test]
fn directive_after_first_instruction_is_a_comment() {
    // A later `# escape=` has no effect: `\` still continues the line.
    let df = parse("FROM scratch\n# escape=`\nRUN echo a \\\n  b\n").unwrap();
    assert_eq!(df.escape, '\\');
    assert!(df.directives.all.is_empty());
    match &df.instructions[1].value {
        Instruction::Run(r) => assert_eq!(r.command.args, vec!["echo a   b"]),
        other => panic!("{other:?}"),
    }
    // After any other comment it is not a directive either.
    let df = parse("# hello\n# escape=`\nFROM scratch\n").unwrap();
    assert_eq!(df.escape, '\\');
    // At the top it is one.
    let df =
        parse("# escape=`\n# syntax=docker/dockerfile:1\nFROM scratch\nRUN a `\n b\n").unwrap();
    assert_eq!(df.escape, '`');
    assert_eq!(df.directives.syntax.as_deref(), Some("docker/dockerfile:1"));
    assert_eq!(df.instructions[1].span.end_line, 5);
}

#[test]
fn bad_directives() {
    let e = err("# escape=x\nFROM scratch\n");
    assert_eq!(e.kind, ErrorKind::Directive);
    assert_eq!(e.line, 1);
    let e = err("# syntax=a\n# syntax=b\nFROM scratch\n");
    assert_eq!(e.kind, ErrorKind::Directive);
    assert_eq!(e.message, "only one syntax parser directive can be used");
}

#[test]
fn json_required_or_invalid() {
    let e = err("FROM scratch\nSHELL /bin/sh -c\n");
    assert_eq!(e.kind, ErrorKind::Json);
    assert_eq!(e.message, "SHELL requires the arguments to be in JSON form");
    let e = err("FROM scratch\nCMD [\"echo\", 1]\n");
    assert_eq!(e.kind, ErrorKind::Json);
    // Text that is not JSON falls back to shell form.
    let df = parse("FROM scratch\nCMD ['echo', 'hi']\n").unwrap();
    match &df.instructions[1].value {
        Instruction::Cmd(c) => {
            assert!(c.prepend_shell);
            assert_eq!(c.args, vec!["['echo', 'hi']"]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn invalid_utf8_and_nul() {
    let e = parse_bytes(b"FROM scratch\nRUN \xff\n").unwrap_err();
    assert_eq!((e.kind, e.line, e.column), (ErrorKind::Encoding, 2, 5));
    let e = parse_bytes(b"FROM scratch\nRUN ab\0\n").unwrap_err();
    assert_eq!((e.kind, e.line, e.column), (ErrorKind::Encoding, 2, 7));
}

#[test]
fn empty_and_no_stage() {
    assert_eq!(err("").kind, ErrorKind::Empty);
    assert_eq!(err("# only a comment\n\n").kind, ErrorKind::Empty);
    let e = err("ARG X=1\nRUN true\n");
    assert_eq!((e.kind, e.line), (ErrorKind::NoStage, 2));
}

#[test]
fn validation_rejects_before_building() {
    for (text, line, msg) in [
        (
            "FROM scratch\nRUN true\nEXPOSE 70000\n",
            3,
            "invalid containerPort: 70000",
        ),
        (
            "FROM scratch\nRUN --mount=type=cache echo\n",
            2,
            "invalid mount target \"/\"",
        ),
        (
            "FROM scratch\nSTOPSIGNAL SIGFOO\n",
            2,
            "invalid signal: SIGFOO",
        ),
        (
            "FROM scratch\nCOPY --chmod=8 a /b\n",
            2,
            "invalid chmod parameter: '8'. it should be octal string and between 0 and 07777",
        ),
        (
            "FROM scratch AS a\nCOPY --from=a x /\n",
            1,
            "circular dependency detected on stage: a",
        ),
    ] {
        let df = parse(text).unwrap();
        let e = df.validate(&NoEnv).expect_err(text);
        assert_eq!(
            (e.kind, e.line, e.message.as_str()),
            (ErrorKind::Invalid, line, msg)
        );
    }
    // A value that uses an unknown variable is left to build time; a known one is checked.
    let df = parse("FROM scratch\nARG P\nEXPOSE $P\n").unwrap();
    assert!(df.validate(&NoEnv).is_ok());
    let args = env_from_pairs(["P=99999"]);
    assert!(df.validate(&args).is_err());
}

#[test]
fn spans_cover_continuations_and_heredocs() {
    let df =
        parse("FROM scratch\n  RUN a \\\n# c\n  b\nCOPY <<EOF /x\nbody\nEOF\nUSER me\n").unwrap();
    let spans: Vec<_> = df
        .instructions
        .iter()
        .map(|i| (i.span.line, i.span.column, i.span.end_line))
        .collect();
    assert_eq!(spans, vec![(1, 1, 1), (2, 3, 4), (5, 1, 7), (8, 1, 8)]);
}

#[test]
fn render_with_caret() {
    let src = "FROM scratch\n\tRUN --bogus x\n";
    let e = err(src);
    assert_eq!(
        e.render("Dockerfile", src),
        "Dockerfile:2:2: unknown flag: --bogus\n   2 | \tRUN --bogus x\n     | \t^\n"
    );
}

#[test]
fn expansion_follows_buildkit() {
    let text = "FROM ${IMG:-alpine}\n\
                COPY --chown=$U:$U --from=$S src/$F /dst/\n\
                ENV K=\"$U x\"\n\
                RUN --mount=type=cache,target=/c/$U echo $U\n\
                ONBUILD RUN echo $U\n\
                COPY <<EOF /f\nhello $U '$U'\nEOF\n";
    let df = parse(text).unwrap();
    let env = env_from_pairs(["U=me", "S=build"]);
    let ex: Vec<_> = df
        .instructions
        .iter()
        .map(|i| i.value.expand(&env, df.escape).unwrap())
        .collect();
    match &ex[0].instruction {
        Instruction::From(f) => assert_eq!(f.image, "alpine"),
        other => panic!("{other:?}"),
    }
    assert!(ex[0].unmatched.contains("IMG"));
    match &ex[1].instruction {
        Instruction::Copy(c) => {
            assert_eq!(c.chown.as_deref(), Some("me:me"));
            assert_eq!(c.from.as_deref(), Some("build"));
            assert_eq!(c.sources, vec!["src/"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(ex[1].unmatched.contains("F"));
    match &ex[2].instruction {
        Instruction::Env(kv) => assert_eq!(kv[0].value, "me x"),
        other => panic!("{other:?}"),
    }
    // RUN: the mount options are expanded, the command is not.
    match &ex[3].instruction {
        Instruction::Run(r) => assert_eq!(r.command.args, vec!["echo $U"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(ex[3].mounts[0].kind, MountType::Cache);
    assert_eq!(ex[3].mounts[0].target.as_deref(), Some("/c/me"));
    match &ex[4].instruction {
        Instruction::Onbuild(o) => assert_eq!(o.expression, "RUN echo $U"),
        other => panic!("{other:?}"),
    }
    // Heredoc bodies keep quotes literally.
    match &ex[5].instruction {
        Instruction::Copy(c) => assert_eq!(c.inline[0].data, "hello me 'me'\n"),
        other => panic!("{other:?}"),
    }
}
