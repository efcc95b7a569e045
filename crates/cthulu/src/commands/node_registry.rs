//! `cthulu node add|ls|rm`: the nodes a platform places remote sandboxes on.
//!
//! `--token` of `node add` is the node's token (what the node was started with); the
//! platform's own API key then comes from `CTHULU_TOKEN`. (clap hands a subcommand's
//! `--token` to the global option of the same name too, so [`platform_key`] undoes that.)

use anyhow::Context as _;
use cthulu_types::{AddNodeRequest, NodeSummary};

use crate::cli::GlobalArgs;
use crate::output::{age, print_json, Table};

#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Register a node: the server calls it with the token before storing anything
    Add(AddNodeArgs),
    /// List the nodes, each asked how it is (reachable, capacity, backends)
    #[command(visible_alias = "list")]
    Ls,
    /// Forget a node (refused while sandboxes live there)
    #[command(visible_alias = "remove")]
    Rm(RemoveNodeArgs),
}

#[derive(Debug, clap::Args)]
pub struct AddNodeArgs {
    /// A name for the node (a-z, 0-9, '-', '_', '.')
    pub name: String,
    /// The node's URL, e.g. http://10.0.0.2:8081 (not the global --url, the platform's)
    #[arg(id = "node_url", value_name = "URL")]
    pub url: String,
    /// The node's token [env: CTHULU_NODE_TOKEN]
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RemoveNodeArgs {
    pub name: String,
}

/// The platform's API key for `node add`: the global `--token` unless it is the node's
/// token given to `node add` itself, in which case `CTHULU_TOKEN`.
fn platform_key(
    global_token: Option<&str>,
    node_token: Option<&str>,
    environment_key: Option<String>,
) -> Option<String> {
    match (global_token, node_token) {
        (Some(global), Some(node)) if global == node => environment_key,
        (global, _) => global.map(str::to_owned),
    }
}

pub async fn run(global: &GlobalArgs, command: NodeCommand) -> anyhow::Result<u8> {
    let client = match &command {
        NodeCommand::Add(args) => {
            let mut global = global.clone();
            global.token = platform_key(
                global.token.as_deref(),
                args.token.as_deref(),
                std::env::var("CTHULU_TOKEN").ok(),
            );
            super::client(&global)?
        }
        _ => super::client(global)?,
    };
    match command {
        NodeCommand::Add(args) => {
            let token = args
                .token
                .or_else(|| std::env::var("CTHULU_NODE_TOKEN").ok())
                .filter(|token| !token.trim().is_empty())
                .context("give the node's token with --token TOKEN (or CTHULU_NODE_TOKEN)")?;
            let request = AddNodeRequest {
                name: args.name.clone(),
                url: args.url,
                token,
            };
            let node = client
                .add_node(&request)
                .await
                .with_context(|| format!("cannot register node {}", args.name))?;
            if global.json {
                print_json(&node)?;
            } else {
                print!("{}", render(&[node], cthulu_types::now_ms()));
            }
        }
        NodeCommand::Ls => {
            let list = client.nodes().await.context("cannot list the nodes")?;
            if global.json {
                print_json(&list)?;
            } else if list.nodes.is_empty() {
                eprintln!("No nodes. Register one with `cthulu node add NAME URL --token TOKEN`.");
            } else {
                print!("{}", render(&list.nodes, cthulu_types::now_ms()));
            }
        }
        NodeCommand::Rm(args) => {
            client
                .remove_node(&args.name)
                .await
                .with_context(|| format!("cannot remove node {}", args.name))?;
        }
    }
    Ok(crate::exit::SUCCESS)
}

fn render(nodes: &[NodeSummary], now_ms: u64) -> String {
    let mut table = Table::new(&[
        "name",
        "url",
        "reachable",
        "sandboxes",
        "backends",
        "added",
        "note",
    ]);
    for node in nodes {
        let sandboxes = match &node.capacity {
            Some(capacity) => match capacity.max_sandboxes {
                Some(max) => format!("{}/{max}", capacity.sandboxes),
                None => capacity.sandboxes.to_string(),
            },
            None => "-".into(),
        };
        let backends: Vec<String> = node.backends.iter().map(ToString::to_string).collect();
        table.row(vec![
            node.name.clone(),
            node.url.clone(),
            if node.reachable { "yes" } else { "no" }.into(),
            sandboxes,
            backends.join(","),
            age(node.added_at_ms, now_ms),
            node.error.clone().unwrap_or_default(),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn the_node_token_is_not_the_api_key() {
        let cli = Cli::try_parse_from([
            "cthulu",
            "node",
            "add",
            "gpu1",
            "http://10.0.0.2:8081",
            "--token",
            "node-secret",
        ])
        .unwrap();
        let Command::Node(crate::commands::node::NodeArgs {
            command: Some(NodeCommand::Add(args)),
            ..
        }) = cli.command
        else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(args.token.as_deref(), Some("node-secret"));
        assert_eq!(args.name, "gpu1");
        assert_eq!(args.url, "http://10.0.0.2:8081");
        assert_eq!(cli.global.url, None, "the node's URL is not the server's");
        // clap gives the global option the node's token too; the key is the environment's.
        let key = platform_key(
            cli.global.token.as_deref(),
            args.token.as_deref(),
            Some("ck_platform".into()),
        );
        assert_eq!(key.as_deref(), Some("ck_platform"));
        assert_eq!(
            platform_key(Some("ck_given"), Some("node-secret"), None).as_deref(),
            Some("ck_given")
        );
        assert_eq!(platform_key(None, None, Some("ck_env".into())), None);
    }

    #[test]
    fn nodes_render_as_a_table() {
        let node = NodeSummary {
            name: "gpu1".into(),
            url: "http://10.0.0.2:8081".into(),
            reachable: false,
            error: Some("node gpu1 is unreachable".into()),
            capacity: None,
            backends: Vec::new(),
            default_backend: None,
            platform_sandboxes: 0,
            added_at_ms: 0,
        };
        let text = render(&[node], 60_000);
        assert!(
            text.contains("gpu1") && text.contains("unreachable"),
            "{text}"
        );
    }
}
