//! Turns a parsed Dockerfile into a graph of cached steps and runs it.
