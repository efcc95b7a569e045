//! Agent runs as a library: how to start a CLI agent and how to read what it prints.
//! Pure code, no I/O: the server and the CLI run the process inside a sandbox and feed
//! its output here.
//!
//! - [`definition`]: [`AgentDefinition`] (agents as data: a program, an argument template
//!   with `{prompt}`-style placeholders and optional groups, an [`OutputFormat`], the
//!   environment variables it needs), the built-in `claude-code` and `codex` example in an
//!   [`AgentRegistry`], and [`AgentDefinition::render`], which turns a definition and a
//!   [`RunRequest`] into argv without any shell.
//! - [`stream_json`] and [`plain_text`]: incremental, bounded parsers fed byte chunks of
//!   any size that yield [`AgentEvent`]s; [`OutputParser`] picks one by format.
//! - [`redact`]: the [`Redactor`] every event passes through before it leaves a parser,
//!   so the values of passed credentials never appear in events.
//! - [`outcome`]: [`OutcomeTracker`] watches the events and, given the [`ProcessEnd`],
//!   produces a [`RunSummary`] with its [`RunOutcome`], result text, cost and turns.
//!
//! The `cthulu-fake-agent` binary replays a recorded transcript slowly and in pieces,
//! standing in for `claude` in end-to-end tests.

pub mod definition;
pub mod event;
mod lines;
pub mod outcome;
pub mod parser;
pub mod plain_text;
pub mod redact;
pub mod stream_json;
mod text;

pub use definition::{
    AgentDefinition, AgentRegistry, ArgTemplate, DefinitionError, EnvNeeds, OutputFormat,
    Placeholder, RenderedCommand, RunRequest, CODEX_EXAMPLE_JSON,
};
pub use event::AgentEvent;
pub use outcome::{summarize, OutcomeTracker, ProcessEnd, RunOutcome, RunSummary};
pub use parser::OutputParser;
pub use plain_text::{PlainTextParser, TAIL_LIMIT};
pub use redact::{Redactor, MIN_SECRET_LEN, REDACTED};
pub use stream_json::StreamJsonParser;
pub use text::{EXCERPT_LIMIT, MAX_LINE, SUMMARY_LIMIT};
