//! Any `.dockerignore` text and any relative paths: compiling the patterns
//! returns a matcher or an error, and matching (the one-shot form, the
//! parent-first walker form and the re-inclusion probe) never panics or hangs.
//! Input: ignore-file text, a NUL byte, then NUL-separated paths.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rbuild_executor::dockerignore::{MatchState, Matcher};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (ignore, paths) = text.split_once('\0').unwrap_or((text, "a/b/c"));
    let Ok(matcher) = Matcher::from_ignore_file(ignore) else {
        return;
    };
    for path in paths.split('\0').take(16) {
        let _ = matcher.excluded(path);
        // Walk the path's components parent first, as the context walker does.
        let mut state = MatchState::default();
        let mut prefix = String::new();
        for part in path.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            match matcher.excluded_in(&prefix, &state) {
                Ok((_, next)) => state = next,
                Err(_) => break,
            }
            let _ = matcher.may_reinclude_under(&prefix);
        }
    }
});
