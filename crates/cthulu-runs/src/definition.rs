//! Agent definitions as data: a program, an argument template with placeholders, the
//! output format and the environment it needs, plus the pure function that renders a
//! definition and a [`RunRequest`] into argv.
//!
//! An argument template is a list of [`ArgTemplate`]s. A plain string is always passed; an
//! `{"optional": [...]}` group is passed whole when every placeholder inside it has a
//! value and dropped whole otherwise, so `["--model", "{model}"]` never leaves a dangling
//! `--model`. In JSON:
//!
//! ```json
//! {"name": "claude-code", "program": "claude",
//!  "args": ["--print", {"optional": ["--model", "{model}"]}, "--", "{prompt}"],
//!  "output_format": "claude-stream-json",
//!  "env": {"one_of": ["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"]}}
//! ```
//!
//! Placeholders are substituted in one pass and values are never re-scanned, so a prompt
//! that itself contains `{model}` or `$(...)` arrives byte for byte. Each rendered
//! template is exactly one argv element: nothing here goes through a shell.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What went wrong with an agent definition or while rendering one.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("unknown agent `{name}`; known agents: {}", known.join(", "))]
    UnknownAgent { name: String, known: Vec<String> },
    #[error(
        "agent `{agent}`: unknown placeholder `{{{placeholder}}}` in argument `{argument}`; \
         known placeholders: {}",
        Placeholder::ALL.map(|p| format!("{{{}}}", p.name())).join(", ")
    )]
    UnknownPlaceholder {
        agent: String,
        argument: String,
        placeholder: String,
    },
    #[error("agent `{agent}`: unmatched brace in argument `{argument}` (write `{{{{` or `}}}}` for a literal brace)")]
    UnmatchedBrace { agent: String, argument: String },
    #[error("agent `{agent}`: argument `{argument}` is always passed but `{{{placeholder}}}` has no value")]
    MissingValue {
        agent: String,
        argument: String,
        placeholder: String,
    },
    #[error("agent `{agent}`: no argument outside an optional group contains `{{prompt}}`")]
    NoPromptArgument { agent: String },
    #[error("agent `{agent}`: the program is empty")]
    EmptyProgram { agent: String },
    #[error("an agent definition needs a non-empty name")]
    EmptyName,
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("agent `{agent}` needs the environment variables {} which were not passed", missing.join(", "))]
    MissingEnv { agent: String, missing: Vec<String> },
    #[error("agent `{agent}` needs one of the environment variables {}, none was passed", one_of.join(", "))]
    MissingCredential { agent: String, one_of: Vec<String> },
    #[error("invalid agent definition JSON")]
    Json(#[source] serde_json::Error),
}

/// The values a template may refer to, by their `{name}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// The task for the agent (required).
    Prompt,
    /// The allowed tools, comma-joined (`Bash,Read,Edit`).
    AllowedTools,
    /// Text appended to the agent's system prompt.
    SystemPrompt,
    /// The model name.
    Model,
    /// The most agentic turns the agent may take.
    MaxTurns,
}

impl Placeholder {
    pub const ALL: [Placeholder; 5] = [
        Placeholder::Prompt,
        Placeholder::AllowedTools,
        Placeholder::SystemPrompt,
        Placeholder::Model,
        Placeholder::MaxTurns,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Placeholder::Prompt => "prompt",
            Placeholder::AllowedTools => "allowed_tools",
            Placeholder::SystemPrompt => "system_prompt",
            Placeholder::Model => "model",
            Placeholder::MaxTurns => "max_turns",
        }
    }

    pub fn from_name(name: &str) -> Option<Placeholder> {
        Placeholder::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// How the agent reports progress on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    /// Claude Code's `--output-format stream-json`: one JSON event per line.
    ClaudeStreamJson,
    /// Free text: each line is an output event; the result is the exit code and the tail.
    PlainText,
}

/// One element of an argument template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ArgTemplate {
    /// Always passed; every placeholder in it must have a value.
    Always(String),
    /// Passed whole when every placeholder in it has a value, dropped whole otherwise.
    Optional { optional: Vec<String> },
}

/// Environment variables an agent needs. Only their names: values come from the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvNeeds {
    /// Every one of these must be passed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all_of: Vec<String>,
    /// At least one of these must be passed (alternative credentials).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub one_of: Vec<String>,
}

/// A CLI agent described as data (loadable from a config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDefinition {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub program: String,
    pub args: Vec<ArgTemplate>,
    pub output_format: OutputFormat,
    #[serde(default)]
    pub env: EnvNeeds,
}

/// What one run asks of an agent. Empty strings and an empty tool list count as absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunRequest {
    pub prompt: String,
    pub allowed_tools: Vec<String>,
    pub system_prompt: Option<String>,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
}

impl RunRequest {
    pub fn new(prompt: impl Into<String>) -> Self {
        RunRequest {
            prompt: prompt.into(),
            ..RunRequest::default()
        }
    }

    fn value(&self, placeholder: Placeholder) -> Option<String> {
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        match placeholder {
            Placeholder::Prompt => Some(self.prompt.clone()).filter(|p| !p.is_empty()),
            Placeholder::AllowedTools => {
                Some(self.allowed_tools.join(",")).filter(|_| !self.allowed_tools.is_empty())
            }
            Placeholder::SystemPrompt => non_empty(&self.system_prompt),
            Placeholder::Model => non_empty(&self.model),
            Placeholder::MaxTurns => self.max_turns.map(|n| n.to_string()),
        }
    }
}

/// A rendered command: run `program` with exactly `args`, no shell in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedCommand {
    pub program: String,
    pub args: Vec<String>,
}

impl RenderedCommand {
    /// Program followed by its arguments.
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.clone())
            .chain(self.args.iter().cloned())
            .collect()
    }
}

/// One piece of a parsed template string.
enum Piece {
    Literal(String),
    Value(Placeholder),
}

impl AgentDefinition {
    /// Parses and validates a definition from JSON.
    pub fn from_json(text: &str) -> Result<AgentDefinition, DefinitionError> {
        let definition: AgentDefinition =
            serde_json::from_str(text).map_err(DefinitionError::Json)?;
        definition.validate()?;
        Ok(definition)
    }

    /// Claude Code in print mode with stream-json output.
    ///
    /// `-p` is the short form of `--print`, not a prompt option: the prompt is Claude
    /// Code's positional argument. It goes after `--` so that a prompt starting with `-`
    /// is not read as an option, and so that the variadic `--allowedTools` cannot swallow
    /// it. `--output-format stream-json` requires `--verbose` in print mode.
    pub fn claude_code() -> AgentDefinition {
        let always = |s: &str| ArgTemplate::Always(s.to_owned());
        let optional = |items: &[&str]| ArgTemplate::Optional {
            optional: items.iter().map(|s| (*s).to_owned()).collect(),
        };
        AgentDefinition {
            name: "claude-code".to_owned(),
            description: "Claude Code (`claude`) in print mode, stream-json events".to_owned(),
            program: "claude".to_owned(),
            args: vec![
                always("--print"),
                always("--verbose"),
                always("--output-format"),
                always("stream-json"),
                optional(&["--allowedTools", "{allowed_tools}"]),
                optional(&["--append-system-prompt", "{system_prompt}"]),
                optional(&["--model", "{model}"]),
                optional(&["--max-turns", "{max_turns}"]),
                always("--"),
                always("{prompt}"),
            ],
            output_format: OutputFormat::ClaudeStreamJson,
            env: EnvNeeds {
                all_of: Vec::new(),
                one_of: vec![
                    "ANTHROPIC_API_KEY".to_owned(),
                    "CLAUDE_CODE_OAUTH_TOKEN".to_owned(),
                ],
            },
        }
    }

    /// An example of a configured agent: a Codex-like CLI with plain-text output.
    pub fn codex_example() -> AgentDefinition {
        AgentDefinition::from_json(CODEX_EXAMPLE_JSON)
            .expect("the built-in Codex example definition is valid")
    }

    /// Checks that the definition can render: names, placeholders, braces, a prompt.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        if self.name.trim().is_empty() {
            return Err(DefinitionError::EmptyName);
        }
        if self.program.is_empty() {
            return Err(DefinitionError::EmptyProgram {
                agent: self.name.clone(),
            });
        }
        let mut has_prompt = false;
        for arg in &self.args {
            match arg {
                ArgTemplate::Always(template) => {
                    let pieces = self.parse(template)?;
                    has_prompt |= pieces
                        .iter()
                        .any(|p| matches!(p, Piece::Value(Placeholder::Prompt)));
                }
                ArgTemplate::Optional { optional } => {
                    for template in optional {
                        self.parse(template)?;
                    }
                }
            }
        }
        if !has_prompt {
            return Err(DefinitionError::NoPromptArgument {
                agent: self.name.clone(),
            });
        }
        Ok(())
    }

    /// Renders the definition for one run. Pure: no environment, no shell, no I/O.
    pub fn render(&self, request: &RunRequest) -> Result<RenderedCommand, DefinitionError> {
        self.validate()?;
        if request.prompt.is_empty() {
            return Err(DefinitionError::EmptyPrompt);
        }
        let mut args = Vec::new();
        for arg in &self.args {
            match arg {
                ArgTemplate::Always(template) => match self.substitute(template, request)? {
                    Ok(rendered) => args.push(rendered),
                    Err(placeholder) => {
                        return Err(DefinitionError::MissingValue {
                            agent: self.name.clone(),
                            argument: template.clone(),
                            placeholder: placeholder.name().to_owned(),
                        })
                    }
                },
                ArgTemplate::Optional { optional } => {
                    let mut group = Vec::with_capacity(optional.len());
                    for template in optional {
                        match self.substitute(template, request)? {
                            Ok(rendered) => group.push(rendered),
                            Err(_absent) => {
                                group.clear();
                                break;
                            }
                        }
                    }
                    args.extend(group);
                }
            }
        }
        Ok(RenderedCommand {
            program: self.program.clone(),
            args,
        })
    }

    /// Checks that the caller passes the environment variables this agent needs.
    /// `passed` are the names of the variables the caller passes (not their values).
    pub fn check_env(&self, passed: &[&str]) -> Result<(), DefinitionError> {
        let is_passed = |name: &str| passed.contains(&name);
        let missing: Vec<String> = self
            .env
            .all_of
            .iter()
            .filter(|name| !is_passed(name))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(DefinitionError::MissingEnv {
                agent: self.name.clone(),
                missing,
            });
        }
        if !self.env.one_of.is_empty() && !self.env.one_of.iter().any(|name| is_passed(name)) {
            return Err(DefinitionError::MissingCredential {
                agent: self.name.clone(),
                one_of: self.env.one_of.clone(),
            });
        }
        Ok(())
    }

    /// Substitutes a template; `Ok(Err(p))` when placeholder `p` has no value.
    fn substitute(
        &self,
        template: &str,
        request: &RunRequest,
    ) -> Result<Result<String, Placeholder>, DefinitionError> {
        let mut out = String::new();
        for piece in self.parse(template)? {
            match piece {
                Piece::Literal(text) => out.push_str(&text),
                Piece::Value(placeholder) => match request.value(placeholder) {
                    Some(value) => out.push_str(&value),
                    None => return Ok(Err(placeholder)),
                },
            }
        }
        Ok(Ok(out))
    }

    fn parse(&self, template: &str) -> Result<Vec<Piece>, DefinitionError> {
        let unmatched = || DefinitionError::UnmatchedBrace {
            agent: self.name.clone(),
            argument: template.to_owned(),
        };
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = template;
        while let Some(index) = rest.find(['{', '}']) {
            literal.push_str(&rest[..index]);
            let brace = &rest[index..];
            if brace.starts_with("{{") || brace.starts_with("}}") {
                literal.push_str(&brace[..1]);
                rest = &brace[2..];
            } else if brace.starts_with('}') {
                return Err(unmatched());
            } else {
                let end = brace.find('}').ok_or_else(unmatched)?;
                let name = &brace[1..end];
                if name.contains('{') {
                    return Err(unmatched());
                }
                let placeholder = Placeholder::from_name(name).ok_or_else(|| {
                    DefinitionError::UnknownPlaceholder {
                        agent: self.name.clone(),
                        argument: template.to_owned(),
                        placeholder: name.to_owned(),
                    }
                })?;
                if !literal.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Value(placeholder));
                rest = &brace[end + 1..];
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(pieces)
    }
}

/// A Codex-like CLI described by configuration rather than code.
pub const CODEX_EXAMPLE_JSON: &str = r#"{
  "name": "codex",
  "description": "a Codex-like CLI in non-interactive mode, plain-text output",
  "program": "codex",
  "args": [
    "exec",
    {"optional": ["--model", "{model}"]},
    "--",
    "{prompt}"
  ],
  "output_format": "plain-text",
  "env": {"all_of": ["OPENAI_API_KEY"]}
}"#;

/// Agent definitions by name: the built-in ones plus any loaded from configuration.
#[derive(Debug, Clone)]
pub struct AgentRegistry {
    agents: BTreeMap<String, AgentDefinition>,
}

impl AgentRegistry {
    /// `claude-code` and the `codex` example.
    pub fn builtin() -> AgentRegistry {
        let mut registry = AgentRegistry {
            agents: BTreeMap::new(),
        };
        for definition in [
            AgentDefinition::claude_code(),
            AgentDefinition::codex_example(),
        ] {
            registry
                .insert(definition)
                .expect("built-in agent definitions are valid");
        }
        registry
    }

    /// Adds or replaces a definition after validating it.
    pub fn insert(&mut self, definition: AgentDefinition) -> Result<(), DefinitionError> {
        definition.validate()?;
        self.agents.insert(definition.name.clone(), definition);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<&AgentDefinition, DefinitionError> {
        self.agents
            .get(name)
            .ok_or_else(|| DefinitionError::UnknownAgent {
                name: name.to_owned(),
                known: self.names(),
            })
    }

    pub fn names(&self) -> Vec<String> {
        self.agents.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claude(request: &RunRequest) -> Vec<String> {
        AgentDefinition::claude_code()
            .render(request)
            .expect("claude renders")
            .argv()
    }

    #[test]
    fn claude_minimal_command_drops_every_optional_group() {
        assert_eq!(
            claude(&RunRequest::new("Fix the failing test")),
            [
                "claude",
                "--print",
                "--verbose",
                "--output-format",
                "stream-json",
                "--",
                "Fix the failing test"
            ]
        );
    }

    #[test]
    fn claude_full_command_keeps_groups_in_order() {
        let request = RunRequest {
            prompt: "go".to_owned(),
            allowed_tools: vec!["Bash(git diff:*)".to_owned(), "Read".to_owned()],
            system_prompt: Some("Be brief.".to_owned()),
            model: Some("sonnet".to_owned()),
            max_turns: Some(7),
        };
        assert_eq!(
            claude(&request)[5..],
            [
                "--allowedTools",
                "Bash(git diff:*),Read",
                "--append-system-prompt",
                "Be brief.",
                "--model",
                "sonnet",
                "--max-turns",
                "7",
                "--",
                "go"
            ]
        );
    }

    #[test]
    fn hostile_prompt_arrives_as_one_intact_argument() {
        let prompt =
            "-rf  \"quoted\" 'single' $(rm -rf /) `id` \n second line\t{model} {{x}} ; | &";
        let request = RunRequest {
            model: Some("m".to_owned()),
            ..RunRequest::new(prompt)
        };
        let argv = claude(&request);
        assert_eq!(argv.last().map(String::as_str), Some(prompt));
        assert_eq!(argv.iter().filter(|a| a.as_str() == prompt).count(), 1);
        assert_eq!(argv[argv.len() - 2], "--");
    }

    #[test]
    fn empty_optional_values_count_as_absent() {
        let request = RunRequest {
            system_prompt: Some(String::new()),
            model: Some(String::new()),
            ..RunRequest::new("p")
        };
        assert_eq!(claude(&request).len(), 7);
    }

    #[test]
    fn group_is_dropped_whole_when_one_value_is_absent() {
        let definition = AgentDefinition {
            name: "two".to_owned(),
            description: String::new(),
            program: "agent".to_owned(),
            args: vec![
                ArgTemplate::Optional {
                    optional: vec![
                        "--model={model}".to_owned(),
                        "--turns={max_turns}".to_owned(),
                    ],
                },
                ArgTemplate::Always("{prompt}".to_owned()),
            ],
            output_format: OutputFormat::PlainText,
            env: EnvNeeds::default(),
        };
        let only_model = RunRequest {
            model: Some("m".to_owned()),
            ..RunRequest::new("p")
        };
        assert_eq!(definition.render(&only_model).unwrap().args, ["p"]);
        let both = RunRequest {
            max_turns: Some(3),
            ..only_model
        };
        assert_eq!(
            definition.render(&both).unwrap().args,
            ["--model=m", "--turns=3", "p"]
        );
    }

    #[test]
    fn unknown_placeholder_is_named() {
        let text = r#"{"name":"x","program":"x","args":["{prompt}",{"optional":["--f","{flavour}"]}],"output_format":"plain-text"}"#;
        let error = AgentDefinition::from_json(text).unwrap_err();
        assert!(
            matches!(&error, DefinitionError::UnknownPlaceholder { placeholder, .. } if placeholder == "flavour")
        );
        let message = error.to_string();
        assert!(message.contains("{flavour}"), "{message}");
        assert!(message.contains("{allowed_tools}"), "{message}");
    }

    #[test]
    fn unmatched_braces_and_escapes() {
        let mut definition = AgentDefinition::codex_example();
        definition.args = vec![ArgTemplate::Always("{{literal}} {prompt}".to_owned())];
        assert_eq!(
            definition.render(&RunRequest::new("p")).unwrap().args,
            ["{literal} p"]
        );
        for bad in ["{prompt", "prompt}", "{pro{mpt}"] {
            definition.args = vec![ArgTemplate::Always(bad.to_owned())];
            assert!(
                matches!(
                    definition.validate(),
                    Err(DefinitionError::UnmatchedBrace { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn always_argument_with_absent_value_is_an_error() {
        let mut definition = AgentDefinition::codex_example();
        definition
            .args
            .insert(0, ArgTemplate::Always("--model={model}".to_owned()));
        let error = definition.render(&RunRequest::new("p")).unwrap_err();
        assert!(error.to_string().contains("{model}"), "{error}");
    }

    #[test]
    fn definitions_must_take_the_prompt_and_a_program() {
        let mut definition = AgentDefinition::codex_example();
        definition.args = vec![ArgTemplate::Optional {
            optional: vec!["{prompt}".to_owned()],
        }];
        assert!(matches!(
            definition.validate(),
            Err(DefinitionError::NoPromptArgument { .. })
        ));
        let mut definition = AgentDefinition::codex_example();
        definition.program.clear();
        assert!(matches!(
            definition.validate(),
            Err(DefinitionError::EmptyProgram { .. })
        ));
        assert!(matches!(
            AgentDefinition::codex_example().render(&RunRequest::new("")),
            Err(DefinitionError::EmptyPrompt)
        ));
    }

    #[test]
    fn unknown_agent_lists_known_ones() {
        let error = AgentRegistry::builtin().get("gpt-pilot").unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown agent `gpt-pilot`; known agents: claude-code, codex"
        );
    }

    #[test]
    fn codex_example_renders_plain_text_agent() {
        let registry = AgentRegistry::builtin();
        let codex = registry.get("codex").unwrap();
        assert_eq!(codex.output_format, OutputFormat::PlainText);
        let request = RunRequest {
            model: Some("o4".to_owned()),
            ..RunRequest::new("--help me")
        };
        assert_eq!(
            codex.render(&request).unwrap().argv(),
            ["codex", "exec", "--model", "o4", "--", "--help me"]
        );
    }

    #[test]
    fn definitions_round_trip_through_json() {
        let claude = AgentDefinition::claude_code();
        let text = serde_json::to_string(&claude).unwrap();
        assert_eq!(AgentDefinition::from_json(&text).unwrap(), claude);
        assert!(
            text.contains(r#"{"optional":["--model","{model}"]}"#),
            "{text}"
        );
        assert!(
            text.contains(r#""output_format":"claude-stream-json""#),
            "{text}"
        );
    }

    #[test]
    fn unknown_definition_fields_are_rejected() {
        let text = r#"{"name":"x","program":"x","args":["{prompt}"],"output_format":"plain-text","envs":{}}"#;
        let error = AgentDefinition::from_json(text).unwrap_err();
        assert!(matches!(error, DefinitionError::Json(_)));
    }

    #[test]
    fn env_needs_are_checked_by_name() {
        let claude = AgentDefinition::claude_code();
        assert!(claude.check_env(&["CLAUDE_CODE_OAUTH_TOKEN"]).is_ok());
        let error = claude.check_env(&["HOME"]).unwrap_err();
        assert!(error.to_string().contains("ANTHROPIC_API_KEY"), "{error}");
        let codex = AgentDefinition::codex_example();
        let error = codex.check_env(&[]).unwrap_err();
        assert!(
            matches!(error, DefinitionError::MissingEnv { missing, .. } if missing == ["OPENAI_API_KEY"])
        );
    }
}
