//! Integration tests of the `cthulu` binary against a real `cthulu serve` child process.

mod agent;
mod auth;
mod errors;
mod files;
mod images;
mod nodes;
mod processes;
mod run;
mod sandboxes;
mod shell;
mod support;
