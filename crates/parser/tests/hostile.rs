//! Hostile Dockerfiles: huge lines, very deep continuations and nesting,
//! invalid UTF-8 and NUL bytes. Each gives a correct parse or a located
//! error; none panics or overflows the stack. The tests run on the test
//! harness's threads (2 MiB stacks), smaller than the 8 MiB main thread
//! rbuild parses on, so a recursion that depends on input size shows here.

use rbuild_parser::{env_from_pairs, parse, parse_bytes, ErrorKind, Instruction, NoEnv};

fn run_args(i: &Instruction) -> &[String] {
    match i {
        Instruction::Run(r) => &r.command.args,
        other => panic!("expected RUN, got {other:?}"),
    }
}

#[test]
fn one_megabyte_line_is_a_clear_error_and_long_lines_below_the_limit_parse() {
    // BuildKit reads lines with a 64 KiB limit and says so.
    let text = format!("FROM scratch\nRUN echo {}\n", "x".repeat(1 << 20));
    let e = parse(&text).expect_err("a 1 MiB line is over the limit");
    assert_eq!((e.kind, e.line), (ErrorKind::LineTooLong, 2));
    assert_eq!(
        e.message,
        "dockerfile line greater than max allowed size of 65535"
    );
    // Just under the limit, and a megabyte instruction made of continued
    // lines, parse whole.
    let word = "x".repeat(60_000);
    let df = parse(&format!("FROM scratch\nRUN echo {word}\n")).expect("valid");
    assert_eq!(
        run_args(&df.instructions[1].value),
        [format!("echo {word}")]
    );
    let text = format!(
        "FROM scratch\nRUN echo \\\n{}\n",
        format!("{word} \\\n").repeat(18)
    );
    let df = parse(&text).expect("long continued instruction");
    assert!(run_args(&df.instructions[1].value)[0].len() > 1_000_000);
    df.validate(&NoEnv).expect("validates");
    // Expansion of a long ENV value is linear too.
    let text = format!("FROM scratch\nENV A={word}\nENV C=$A\n");
    let df = parse(&text).unwrap();
    let env = env_from_pairs([format!("A={word}").as_str()]);
    let e = df.instructions[2].value.expand(&env, df.escape).unwrap();
    assert!(format!("{e:?}").contains(&word[..100]));
}

#[test]
fn ten_thousand_continuations_join_into_one_instruction() {
    let mut text = String::from("FROM scratch\nRUN echo \\\n");
    for i in 0..10_000 {
        text.push_str(&format!("  a{i} \\\n"));
        // Comment and empty lines inside a continuation are dropped, as
        // BuildKit drops them.
        if i % 1000 == 0 {
            text.push_str("# comment\n\n");
        }
    }
    text.push_str("  end\n");
    let df = parse(&text).expect("deep continuation is valid");
    assert_eq!(df.instructions.len(), 2);
    let cmd = &run_args(&df.instructions[1].value)[0];
    assert!(cmd.starts_with("echo   a0   a1 "), "{}", &cmd[..40]);
    assert!(cmd.ends_with("a9999   end"), "{}", &cmd[cmd.len() - 40..]);
    let span = df.instructions[1].span;
    assert_eq!((span.line, span.end_line), (2, 2 + 10_000 + 2 * 10 + 1));
    // A file that ends inside the continuation is still one instruction.
    let open = format!("FROM scratch\nRUN a {}", "\\\n".repeat(10_000));
    let df = parse(&open).expect("trailing continuation");
    assert_eq!(df.instructions.len(), 2);
}

#[test]
fn deep_nesting_in_words_and_json_is_an_error_or_a_value() {
    // ${a:-${a:-...}}: a hundred levels expand, ten thousand are an error.
    let nested = |n: usize| {
        let mut word = String::from("x");
        for _ in 0..n {
            word = format!("${{a:-{word}}}");
        }
        word
    };
    let env = env_from_pairs(["Z=1"]);
    let df = parse(&format!("FROM scratch\nENV B={}\n", nested(100))).unwrap();
    df.validate(&NoEnv).expect("100 levels are fine");
    let e = df.instructions[1].value.expand(&env, df.escape).unwrap();
    assert!(format!("{e:?}").contains("B"), "{e:?}");
    let df = parse(&format!("FROM scratch\nENV B={}\n", nested(10_000))).unwrap();
    let err = df.validate(&NoEnv).expect_err("too deep");
    assert!(err.message.contains("nested more than 100 deep"), "{err}");
    assert_eq!(err.line, 2);
    let err = df.instructions[1]
        .value
        .expand(&env, df.escape)
        .unwrap_err();
    assert!(
        err.to_string().contains("nested more than 100 deep"),
        "{err}"
    );
    // Exec form that is deeply nested JSON falls back to shell form, as in
    // BuildKit, or is rejected: either way no recursion blow-up.
    let json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let text = format!("FROM scratch\nCMD {json}\n");
    if let Ok(df) = parse(&text) {
        assert_eq!(df.instructions.len(), 2);
    }
    // Quotes and escapes that never close.
    let text = format!("FROM scratch\nRUN echo \"{}\n", "\\\"'".repeat(100_000));
    let _ = parse(&text).map(|df| df.validate(&NoEnv));
}

#[test]
fn invalid_utf8_is_a_located_error() {
    let data = b"FROM scratch\nRUN echo caf\xe9 \xff\xfe\n";
    let e = parse_bytes(data).expect_err("invalid UTF-8");
    assert_eq!(e.kind, ErrorKind::Encoding);
    assert_eq!((e.line, e.column), (2, 13));
    assert!(e.message.contains("UTF-8"), "{}", e.message);
    // A truncated multi-byte sequence at the very end.
    let e = parse_bytes(b"FROM scratch\nLABEL a=\xe2\x82").expect_err("truncated");
    assert_eq!((e.kind, e.line), (ErrorKind::Encoding, 2));
}

#[test]
fn nul_bytes_are_a_located_error() {
    let e = parse_bytes(b"FROM scratch\nRUN a\0b\n").expect_err("NUL");
    assert_eq!(e.kind, ErrorKind::Encoding);
    assert_eq!((e.line, e.column), (2, 6));
    // A megabyte of NULs, as a binary file given as a Dockerfile would be.
    let e = parse_bytes(&vec![0u8; 1 << 20]).expect_err("binary");
    assert_eq!((e.kind, e.line, e.column), (ErrorKind::Encoding, 1, 1));
    // NUL in text handed straight to `parse` (no byte check): still no panic.
    let _ = parse("FROM scratch\nRUN a\0b\n");
}

#[test]
fn many_instructions_and_long_heredocs() {
    let mut text = String::from("FROM scratch\n");
    for i in 0..20_000 {
        text.push_str(&format!("ENV V{i}=x\n"));
    }
    let body = "line\n".repeat(200_000);
    text.push_str(&format!("RUN <<EOF\n{body}EOF\n"));
    // An unterminated heredoc runs to the end of the file.
    text.push_str("RUN <<NEVER\nnot closed\n");
    match parse(&text) {
        Ok(df) => assert_eq!(df.instructions.len(), 20_003),
        Err(e) => assert!(e.line >= 1, "{e}"),
    }
}
