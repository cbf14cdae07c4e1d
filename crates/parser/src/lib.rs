//! Dockerfile parser: grammar, typed AST with spans, and shell-word expansion.
