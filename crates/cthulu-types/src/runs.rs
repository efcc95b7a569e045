//! Agent runs: an agent (Claude Code or any CLI agent described as data) working on a
//! copy of a directory inside a sandbox. [`CreateRunRequest`] starts one, [`Run`] is its
//! state and outcome, [`RunEvent`]s are what it did, streamed as Server-Sent Events
//! (docs/streaming.md).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{BackendKind, SandboxId};

/// The agent a run uses when the request names none.
pub const DEFAULT_AGENT: &str = "claude-code";

/// `POST /api/v1/runs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRunRequest {
    pub prompt: String,
    /// A registered agent definition (`GET /api/v1/info` does not list them; an unknown
    /// name is answered with the known ones). Default `claude-code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Backend of the sandbox made for the run; default: the server's. Not with
    /// `sandbox_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
    /// Run in this existing sandbox instead of a new one; it is kept afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub sandbox_id: Option<SandboxId>,
    /// The working directory: a tar archive, optionally gzipped, in base64. Unpacked into
    /// the sandbox's workspace before the agent starts; the changes are computed against
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_archive: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_tools: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    /// Environment of the agent's process (credentials such as `ANTHROPIC_API_KEY`). The
    /// values reach only the process: they are never stored (the run keeps the names),
    /// never written into the sandbox, and redacted from events.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The agent is killed after this many seconds (`timed_out`); default 30 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Keep the sandbox after the run (its id is on the run).
    #[serde(default)]
    pub keep: bool,
}

/// Where a run is in its life. `queued`, `provisioning` and `running` are live; the
/// others are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    /// Making the sandbox and copying the input in.
    Provisioning,
    /// The agent runs.
    Running,
    /// The agent reported success and exited 0.
    Succeeded,
    /// The agent reported an error, exited non-zero, printed no result, or the sandbox
    /// failed; `error` says which.
    Failed,
    Cancelled,
    TimedOut,
    /// The server stopped while the run was live.
    Interrupted,
}

impl RunStatus {
    pub const ALL: [RunStatus; 8] = [
        RunStatus::Queued,
        RunStatus::Provisioning,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::TimedOut,
        RunStatus::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Provisioning => "provisioning",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(raw: &str) -> Option<RunStatus> {
        RunStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == raw)
    }

    /// Whether the run has ended (nothing will change any more).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            RunStatus::Queued | RunStatus::Provisioning | RunStatus::Running
        )
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// What the agent changed in the workspace, against what was copied in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunChanges {
    /// Unified diff (`a/`, `b/` prefixes); binary files as `Binary files … differ`.
    /// Credentials are redacted from it.
    pub diff: String,
    /// Paths (relative to the workspace) added or modified; their new contents are in
    /// `GET /api/v1/runs/{id}/changes.tar`.
    pub changed: Vec<String>,
    /// Paths removed by the agent.
    pub deleted: Vec<String>,
    /// The diff was cut at the server's limit (`changed`, `deleted` and the archive are
    /// complete).
    #[serde(default)]
    pub diff_truncated: bool,
}

/// Where a run's time went, in milliseconds, as the server measured it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunTimings {
    /// Making (or finding) the sandbox.
    pub provision_ms: f64,
    /// Unpacking the input archive in the sandbox.
    pub copy_in_ms: f64,
    /// From asking the sandbox to start the agent to the process running.
    pub start_ms: f64,
    /// The agent's process, from start to exit.
    pub agent_ms: f64,
    /// Fetching the workspace, computing the changes and destroying the sandbox.
    pub teardown_ms: f64,
}

impl RunTimings {
    /// The run's cost beyond the agent's own time.
    pub fn overhead_ms(&self) -> f64 {
        self.provision_ms + self.copy_in_ms + self.start_ms + self.teardown_ms
    }
}

/// A run: its request (without credential values), status and outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Run {
    pub id: String,
    pub agent: String,
    pub status: RunStatus,
    pub prompt: String,
    /// Names of the environment variables passed to the agent (never their values).
    #[serde(default)]
    pub env_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
    /// The run's sandbox: while it runs, and afterwards when it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub sandbox_id: Option<SandboxId>,
    pub keep: bool,
    /// The agent's final text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<u64>,
    /// Wall time of the whole run (set when it ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why the run failed, timed out, or was interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set when the run has ended and the workspace could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<RunChanges>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<RunTimings>,
    /// Events stored for the run (SSE ids go from 1 to this).
    pub event_count: u64,
    /// Later events were not stored: the run printed more than the server keeps.
    #[serde(default)]
    pub events_truncated: bool,
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
}

/// `GET /api/v1/runs`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunList {
    pub runs: Vec<Run>,
}

/// One stored event of a run: the `data` of an SSE event whose `id` is `seq` and whose
/// `event` is the body's `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunEvent {
    /// 1, 2, 3 … within the run.
    pub seq: u64,
    pub at_ms: u64,
    #[serde(flatten)]
    pub body: RunEventBody,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunEventBody {
    /// The run moved to `status` (`message`: why, for final ones).
    Status {
        status: RunStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// An event of the agent, as `cthulu_runs::AgentEvent` serializes it: `kind` is one
    /// of `init`, `assistant_text`, `tool_use`, `tool_result`, `result`, `output`,
    /// `unknown`, `malformed`.
    Agent {
        #[schema(value_type = Object)]
        event: serde_json::Value,
    },
    /// A line the agent printed on stderr.
    Stderr { line: String },
    /// Something the server says about the run itself (events cut at the limit).
    Notice { message: String },
}

impl RunEventBody {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            RunEventBody::Status { .. } => "status",
            RunEventBody::Agent { .. } => "agent",
            RunEventBody::Stderr { .. } => "stderr",
            RunEventBody::Notice { .. } => "notice",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_know_when_they_are_final() {
        for status in RunStatus::ALL {
            assert_eq!(RunStatus::parse(status.as_str()), Some(status));
            let json = serde_json::to_value(status).unwrap();
            assert_eq!(json, status.as_str());
        }
        assert!(!RunStatus::Running.is_final());
        assert!(RunStatus::Interrupted.is_final());
    }

    #[test]
    fn events_flatten_their_body() {
        let event = RunEvent {
            seq: 3,
            at_ms: 5,
            body: RunEventBody::Agent {
                event: serde_json::json!({"kind": "assistant_text", "text": "hi"}),
            },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "agent");
        assert_eq!(json["event"]["text"], "hi");
        assert_eq!(serde_json::from_value::<RunEvent>(json).unwrap(), event);
    }

    #[test]
    fn unknown_request_fields_are_refused() {
        let error =
            serde_json::from_str::<CreateRunRequest>(r#"{"prompt":"p","promt":"x"}"#).unwrap_err();
        assert!(error.to_string().contains("promt"), "{error}");
    }
}
