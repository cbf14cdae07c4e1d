//! Executes build steps: snapshots, the RUN sandbox, and COPY/ADD file operations.
