//! `cthulu info`: the server's version, backends and what each can do.

use anyhow::Context as _;
use cthulu_types::{CheckpointSupport, ServerInfo};

use crate::cli::GlobalArgs;
use crate::output::{print_json, Table};

pub async fn run(global: &GlobalArgs) -> anyhow::Result<u8> {
    let client = super::client(global)?;
    let info = client
        .info()
        .await
        .context("cannot get the server's info")?;
    if global.json {
        print_json(&info)?;
    } else {
        print!("{}", render(&info));
    }
    Ok(crate::exit::SUCCESS)
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.into()
}

fn render(info: &ServerInfo) -> String {
    let mut text = format!(
        "version:          {}\ndefault backend:  {}\nauth required:    {}\n\n",
        info.version,
        info.default_backend,
        yes_no(info.auth_required)
    );
    let mut table = Table::new(&[
        "backend",
        "available",
        "isolation",
        "pty",
        "files",
        "ports",
        "checkpoint",
        "stop/resume",
        "note",
    ]);
    for backend in &info.backends {
        let capabilities = &backend.capabilities;
        let checkpoint = match capabilities.checkpoint {
            CheckpointSupport::None => "no",
            CheckpointSupport::Filesystem => "filesystem",
            CheckpointSupport::FilesystemAndMemory => "fs+memory",
        };
        table.row(vec![
            backend.kind.to_string(),
            yes_no(backend.available),
            yes_no(capabilities.isolation),
            yes_no(capabilities.pty),
            yes_no(capabilities.files),
            yes_no(capabilities.ports),
            checkpoint.into(),
            yes_no(capabilities.stop_resume),
            backend.unavailable_reason.clone().unwrap_or_default(),
        ]);
    }
    text.push_str(&table.render());
    text
}
