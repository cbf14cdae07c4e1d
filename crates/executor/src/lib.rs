//! Executes build steps: snapshots, the RUN sandbox, and COPY/ADD file operations.

pub mod context;
pub mod copy;
pub mod diff;
pub mod dockerignore;
pub mod fetch;
mod goregex;
pub mod pathmatch;
pub mod sandbox;
pub mod snapshot;
pub mod user;
