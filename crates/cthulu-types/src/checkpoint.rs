//! Checkpoints: saved states of a sandbox that `restore` goes back to.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/v1/sandboxes/{id}/checkpoints`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRequest {
    /// A name to restore by; unique within the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Save memory (running processes) too, on backends that can.
    #[serde(default)]
    pub memory: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Checkpoint {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub created_at_ms: u64,
    pub size_bytes: u64,
    /// Whether memory (processes) was saved, or only the filesystem.
    pub memory: bool,
}

/// `GET /api/v1/sandboxes/{id}/checkpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckpointList {
    pub checkpoints: Vec<Checkpoint>,
}

/// A checkpoint name is 1 to 64 characters of letters, digits, `-`, `_` and `.`, and does
/// not start with `.`.
pub fn valid_checkpoint_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn checkpoint_names() {
        assert!(super::valid_checkpoint_name("before-v2.1"));
        assert!(!super::valid_checkpoint_name("../x"));
        assert!(!super::valid_checkpoint_name(".hidden"));
        assert!(!super::valid_checkpoint_name(""));
        assert!(!super::valid_checkpoint_name("a b"));
    }
}
