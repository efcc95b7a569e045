//! How the server runs agents: limits, and the agent definitions it knows (the built-in
//! ones plus those of an agents file).

use std::path::{Path, PathBuf};
use std::time::Duration;

use cthulu_runs::{AgentDefinition, AgentRegistry, DefinitionError};

/// The agents file looked for in the state directory when none is configured.
pub const AGENTS_FILE: &str = "agents.json";

/// Largest input archive accepted by default (as sent, and unpacked).
pub const DEFAULT_MAX_INPUT_BYTES: u64 = 100 * 1024 * 1024;
/// Events stored per run by default; later ones are counted, not kept.
pub const DEFAULT_MAX_EVENTS: u64 = 10_000;
/// The agent's time limit when the request gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone)]
pub struct RunsConfig {
    /// A JSON array of agent definitions; `None`: `$CTHULU_HOME/agents.json` when it
    /// exists.
    pub agents_file: Option<PathBuf>,
    pub max_input_bytes: u64,
    pub max_events: u64,
    /// Largest workspace read back at the end of a run to compute its changes.
    pub max_workspace_bytes: u64,
    /// Largest diff stored on a run (the changed files and their archive are complete).
    pub max_diff_bytes: usize,
}

impl Default for RunsConfig {
    fn default() -> Self {
        RunsConfig {
            agents_file: None,
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            max_events: DEFAULT_MAX_EVENTS,
            max_workspace_bytes: 1024 * 1024 * 1024,
            max_diff_bytes: 4 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunsConfigError {
    #[error("cannot read the agents file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agents file {path} is not a JSON array of agent definitions")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the agents file {path} has an invalid definition")]
    Definition {
        path: PathBuf,
        #[source]
        source: DefinitionError,
    },
}

/// The built-in agents plus those of the configured file (or of `home/agents.json` when
/// it exists); a definition of the file replaces a built-in one of the same name.
pub fn load_agents(config: &RunsConfig, home: &Path) -> Result<AgentRegistry, RunsConfigError> {
    let mut registry = AgentRegistry::builtin();
    let path = match &config.agents_file {
        Some(path) => path.clone(),
        None => {
            let default = home.join(AGENTS_FILE);
            if !default.exists() {
                return Ok(registry);
            }
            default
        }
    };
    let text = fs_err::read_to_string(&path).map_err(|source| RunsConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let definitions: Vec<AgentDefinition> =
        serde_json::from_str(&text).map_err(|source| RunsConfigError::Parse {
            path: path.clone(),
            source,
        })?;
    for definition in definitions {
        registry
            .insert(definition)
            .map_err(|source| RunsConfigError::Definition {
                path: path.clone(),
                source,
            })?;
    }
    Ok(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_file_adds_definitions_and_bad_ones_are_named() {
        let home = tempfile::tempdir().unwrap();
        let config = RunsConfig::default();
        assert_eq!(
            load_agents(&config, home.path()).unwrap().names(),
            ["claude-code", "codex"]
        );
        std::fs::write(
            home.path().join(AGENTS_FILE),
            r#"[{"name":"echo","program":"echo","args":["{prompt}"],"output_format":"plain-text"}]"#,
        )
        .unwrap();
        let registry = load_agents(&config, home.path()).unwrap();
        assert!(registry.get("echo").is_ok());
        std::fs::write(
            home.path().join(AGENTS_FILE),
            r#"[{"name":"bad","program":"x","args":["no prompt"],"output_format":"plain-text"}]"#,
        )
        .unwrap();
        let error = load_agents(&config, home.path()).unwrap_err();
        assert!(
            matches!(error, RunsConfigError::Definition { .. }),
            "{error}"
        );
    }
}
