//! Any word, either escape character, word and words mode, with and without the heredoc
//! lexer options: expansion returns a value or an error, never panics or hangs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(word) = std::str::from_utf8(rest) else {
        return;
    };
    let env = rbuild_parser::env_from_pairs(["A=a b", "E=", "P=/usr/local/bin", "K=한국어"]);
    let mut lex = rbuild_parser::Lexer::new(if mode & 1 == 0 { '\\' } else { '`' });
    lex.raw_quotes = mode & 2 != 0;
    lex.raw_escapes = mode & 4 != 0;
    lex.skip_unset_env = mode & 8 != 0;
    lex.skip_process_quotes = mode & 16 != 0;
    let _ = lex.process_word(word, &env);
    let _ = lex.process_words(word, &env);
    let _ = rbuild_parser::lowlevel::parse_heredoc(word);
});
