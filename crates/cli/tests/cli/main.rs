//! End-to-end tests of the `rbuild` binary: each test gets its own store
//! (`--root`) and context, runs the real command line, and checks the
//! results with independent tools (skopeo, umoci, tar) where it can.

mod support;

mod build;
mod cache;
mod errors;
mod images;
mod outputs;
