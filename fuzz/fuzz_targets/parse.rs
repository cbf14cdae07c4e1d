//! Any bytes: the parser returns a Dockerfile or a located error, never panics or hangs;
//! a parsed file dumps, validates and expands without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = rbuild_parser::lowlevel::check_bytes(data) else {
        return;
    };
    if let Ok(nodes) = rbuild_parser::parse_nodes(text) {
        let _ = rbuild_parser::dump_buildkit(&nodes.nodes);
    }
    match rbuild_parser::parse(text) {
        Ok(df) => {
            let _ = df.validate(&rbuild_parser::NoEnv);
            let env = rbuild_parser::env_from_pairs(["A=a b", "E="]);
            for i in &df.instructions {
                let _ = i.value.expand(&env, df.escape);
            }
        }
        Err(e) => {
            assert!(e.line >= 1 && e.column >= 1, "unlocated error {e:?}");
            let _ = e.render("Dockerfile", text);
        }
    }
});
