//! The final outcome of a run, from its events and how its process ended.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::definition::OutputFormat;
use crate::event::AgentEvent;

/// How the agent's process ended, as the runner saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessEnd {
    /// Exited by itself with this code.
    Exited(i32),
    /// Killed by this signal (not by the runner).
    Signaled(i32),
    /// The runner killed it when its time limit passed.
    TimedOut(Duration),
    /// The runner killed it because the run was cancelled.
    Cancelled,
}

impl ProcessEnd {
    fn describe(self) -> String {
        match self {
            ProcessEnd::Exited(code) => format!("exited with code {code}"),
            ProcessEnd::Signaled(signal) => format!("was killed by signal {signal}"),
            ProcessEnd::TimedOut(after) => format!("timed out after {after:?}"),
            ProcessEnd::Cancelled => "was cancelled".to_owned(),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RunOutcome {
    /// The agent reported success and exited 0 (plain text: exited 0).
    Succeeded,
    /// The agent reported an error, or exited non-zero.
    Failed { message: String },
    /// A stream-json agent ended without a result event: it crashed or printed garbage.
    NoResult { message: String },
    /// The run's time limit passed.
    TimedOut { message: String },
    /// The run was cancelled.
    Cancelled,
}

impl RunOutcome {
    pub fn is_success(&self) -> bool {
        matches!(self, RunOutcome::Succeeded)
    }
}

/// What a finished run reports: outcome, result text, cost, turns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub outcome: RunOutcome,
    /// The agent's final text (stream-json `result`; plain text: the output's tail).
    pub text: Option<String>,
    pub cost_usd: Option<f64>,
    pub turns: Option<u64>,
    /// The agent's own measure of its duration.
    pub duration_ms: Option<u64>,
    pub session_id: Option<String>,
    /// Lines that were not events (stream-json only).
    pub malformed_lines: u64,
}

/// Watches a run's events as they pass, to summarise the run when its process ends,
/// without keeping the events.
#[derive(Debug, Clone)]
pub struct OutcomeTracker {
    format: OutputFormat,
    last_result: Option<AgentEvent>,
    session_id: Option<String>,
    malformed_lines: u64,
    last_malformed: Option<String>,
}

impl OutcomeTracker {
    pub fn new(format: OutputFormat) -> OutcomeTracker {
        OutcomeTracker {
            format,
            last_result: None,
            session_id: None,
            malformed_lines: 0,
            last_malformed: None,
        }
    }

    pub fn observe(&mut self, event: &AgentEvent) {
        match event {
            // The last result event wins, as Claude Code prints one at the very end.
            AgentEvent::Result { .. } => self.last_result = Some(event.clone()),
            AgentEvent::Init { session_id, .. } => {
                self.session_id = session_id.clone().or(self.session_id.take());
            }
            AgentEvent::Malformed { excerpt, error } => {
                self.malformed_lines += 1;
                self.last_malformed = Some(format!("{error}: {excerpt}"));
            }
            _ => {}
        }
    }

    /// The summary of a run. `output_tail` is the plain-text parser's tail (ignored for
    /// stream-json, whose result text comes from its result event).
    pub fn finish(self, end: ProcessEnd, output_tail: Option<String>) -> RunSummary {
        let mut summary = RunSummary {
            outcome: RunOutcome::Succeeded,
            text: None,
            cost_usd: None,
            turns: None,
            duration_ms: None,
            session_id: self.session_id.clone(),
            malformed_lines: self.malformed_lines,
        };
        let mut reported: Option<(bool, String)> = None;
        match (self.format, &self.last_result) {
            (
                OutputFormat::ClaudeStreamJson,
                Some(AgentEvent::Result {
                    success,
                    subtype,
                    text,
                    cost_usd,
                    turns,
                    duration_ms,
                    session_id,
                }),
            ) => {
                summary.text = text.clone();
                summary.cost_usd = *cost_usd;
                summary.turns = *turns;
                summary.duration_ms = *duration_ms;
                summary.session_id = session_id.clone().or(summary.session_id);
                reported = Some((*success, subtype.clone()));
            }
            (OutputFormat::PlainText, _) => {
                summary.text = output_tail.filter(|tail| !tail.is_empty());
            }
            _ => {}
        }
        summary.outcome = match (end, reported) {
            (ProcessEnd::TimedOut(_), _) => RunOutcome::TimedOut {
                message: format!("the agent {}", end.describe()),
            },
            (ProcessEnd::Cancelled, _) => RunOutcome::Cancelled,
            (ProcessEnd::Exited(0), Some((true, _))) => RunOutcome::Succeeded,
            (_, Some((true, _))) => RunOutcome::Failed {
                message: format!("the agent reported success but {}", end.describe()),
            },
            (_, Some((false, subtype))) => RunOutcome::Failed {
                message: error_message(&subtype, &summary),
            },
            (ProcessEnd::Exited(0), None) if self.format == OutputFormat::PlainText => {
                RunOutcome::Succeeded
            }
            (_, None) if self.format == OutputFormat::PlainText => RunOutcome::Failed {
                message: format!("the agent {}", end.describe()),
            },
            (_, None) => {
                let mut message = format!("the agent {} without a result event", end.describe());
                if self.malformed_lines > 0 {
                    message.push_str(&format!(
                        "; {} malformed lines, the last: {}",
                        self.malformed_lines,
                        self.last_malformed.as_deref().unwrap_or_default()
                    ));
                }
                RunOutcome::NoResult { message }
            }
        };
        summary
    }
}

fn error_message(subtype: &str, summary: &RunSummary) -> String {
    let mut message = match subtype {
        "error_max_turns" => match summary.turns {
            Some(turns) => format!("the agent stopped at its turn limit after {turns} turns"),
            None => "the agent stopped at its turn limit".to_owned(),
        },
        "error_during_execution" => "the agent failed during execution".to_owned(),
        "" => "the agent reported an error".to_owned(),
        other => format!("the agent reported an error ({other})"),
    };
    if let Some(text) = summary.text.as_deref().filter(|t| !t.is_empty()) {
        message.push_str(": ");
        message.push_str(text);
    }
    message
}

/// Summarises a run from all its events at once.
pub fn summarize(
    format: OutputFormat,
    events: &[AgentEvent],
    end: ProcessEnd,
    output_tail: Option<String>,
) -> RunSummary {
    let mut tracker = OutcomeTracker::new(format);
    events.iter().for_each(|event| tracker.observe(event));
    tracker.finish(end, output_tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(success: bool, subtype: &str, text: Option<&str>) -> AgentEvent {
        AgentEvent::Result {
            success,
            subtype: subtype.to_owned(),
            text: text.map(str::to_owned),
            cost_usd: Some(0.25),
            turns: Some(3),
            duration_ms: Some(1200),
            session_id: Some("s1".to_owned()),
        }
    }

    fn stream(events: &[AgentEvent], end: ProcessEnd) -> RunSummary {
        summarize(OutputFormat::ClaudeStreamJson, events, end, None)
    }

    #[test]
    fn success_needs_a_success_result_and_exit_zero() {
        let summary = stream(
            &[result(true, "success", Some("done"))],
            ProcessEnd::Exited(0),
        );
        assert_eq!(summary.outcome, RunOutcome::Succeeded);
        assert_eq!(summary.text.as_deref(), Some("done"));
        assert_eq!((summary.cost_usd, summary.turns), (Some(0.25), Some(3)));
        let summary = stream(&[result(true, "success", None)], ProcessEnd::Exited(2));
        assert_eq!(
            summary.outcome,
            RunOutcome::Failed {
                message: "the agent reported success but exited with code 2".to_owned()
            }
        );
    }

    #[test]
    fn error_results_explain_themselves() {
        let summary = stream(
            &[result(false, "error_max_turns", None)],
            ProcessEnd::Exited(1),
        );
        assert_eq!(
            summary.outcome,
            RunOutcome::Failed {
                message: "the agent stopped at its turn limit after 3 turns".to_owned()
            }
        );
        let summary = stream(
            &[result(false, "error_during_execution", Some("boom"))],
            ProcessEnd::Exited(1),
        );
        assert_eq!(
            summary.outcome,
            RunOutcome::Failed {
                message: "the agent failed during execution: boom".to_owned()
            }
        );
    }

    #[test]
    fn no_result_event_names_the_exit_and_the_garbage() {
        let garbage = AgentEvent::Malformed {
            excerpt: "Segmentation fault".to_owned(),
            error: "not JSON".to_owned(),
        };
        let summary = stream(&[garbage], ProcessEnd::Signaled(11));
        assert_eq!(
            summary.outcome,
            RunOutcome::NoResult {
                message: "the agent was killed by signal 11 without a result event; \
                          1 malformed lines, the last: not JSON: Segmentation fault"
                    .to_owned()
            }
        );
        assert_eq!(summary.malformed_lines, 1);
    }

    #[test]
    fn timeout_and_cancel_win_over_a_result() {
        let events = [result(true, "success", Some("done"))];
        let summary = stream(&events, ProcessEnd::TimedOut(Duration::from_secs(900)));
        assert_eq!(
            summary.outcome,
            RunOutcome::TimedOut {
                message: "the agent timed out after 900s".to_owned()
            }
        );
        assert_eq!(summary.cost_usd, Some(0.25));
        assert_eq!(
            stream(&events, ProcessEnd::Cancelled).outcome,
            RunOutcome::Cancelled
        );
    }

    #[test]
    fn plain_text_outcome_is_the_exit_code_and_the_tail() {
        let ok = summarize(
            OutputFormat::PlainText,
            &[],
            ProcessEnd::Exited(0),
            Some("all done".to_owned()),
        );
        assert_eq!(ok.outcome, RunOutcome::Succeeded);
        assert_eq!(ok.text.as_deref(), Some("all done"));
        let failed = summarize(
            OutputFormat::PlainText,
            &[],
            ProcessEnd::Exited(3),
            Some("error: x".to_owned()),
        );
        assert_eq!(
            failed.outcome,
            RunOutcome::Failed {
                message: "the agent exited with code 3".to_owned()
            }
        );
        assert_eq!(failed.text.as_deref(), Some("error: x"));
    }
}
