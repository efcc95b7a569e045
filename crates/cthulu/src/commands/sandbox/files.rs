//! `sandbox ls-files`: a directory of a sandbox.

use anyhow::Context as _;
use cthulu_client::CthuluClient;
use cthulu_types::FileKind;

use crate::output::{self, print_json, Table};

#[derive(Debug, clap::Args)]
pub struct ListFilesArgs {
    /// The sandbox id
    pub sandbox_id: String,
    /// The directory; relative paths start at the workspace
    #[arg(default_value = "/workspace")]
    pub path: String,
}

pub async fn list(client: &CthuluClient, json: bool, args: ListFilesArgs) -> anyhow::Result<u8> {
    let listing = client
        .read_dir(&args.sandbox_id, &args.path)
        .await
        .with_context(|| format!("cannot list {} in sandbox {}", args.path, args.sandbox_id))?;
    if json {
        print_json(&listing)?;
        return Ok(crate::exit::SUCCESS);
    }
    let now = cthulu_types::now_ms();
    let mut table = Table::new(&["mode", "size", "modified", "name"]);
    for entry in &listing.entries {
        let (kind, name) = match (entry.kind, &entry.link_target) {
            (FileKind::Dir, _) => ('d', format!("{}/", entry.name)),
            (FileKind::Symlink, Some(target)) => ('l', format!("{} -> {target}", entry.name)),
            (FileKind::Symlink, None) => ('l', entry.name.clone()),
            (FileKind::File, _) => ('-', entry.name.clone()),
            (FileKind::Other, _) => ('?', entry.name.clone()),
        };
        table.row(vec![
            output::permissions(kind, entry.mode),
            output::bytes(entry.size),
            format!("{} ago", output::age(entry.modified_ms, now)),
            name,
        ]);
    }
    table.print()?;
    Ok(crate::exit::SUCCESS)
}
