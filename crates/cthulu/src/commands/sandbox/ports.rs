//! `sandbox port | ports | unport`.

use anyhow::Context as _;
use cthulu_client::CthuluClient;

use super::lifecycle::SandboxArg;
use crate::output::{print_json, Table};

#[derive(Debug, clap::Args)]
pub struct PortArgs {
    /// The sandbox id
    pub sandbox_id: String,
    /// The port inside the sandbox
    pub port: u16,
}

pub async fn expose(client: &CthuluClient, json: bool, args: PortArgs) -> anyhow::Result<u8> {
    let exposed = client
        .expose_port(&args.sandbox_id, args.port)
        .await
        .with_context(|| {
            format!(
                "cannot expose port {} of sandbox {}",
                args.port, args.sandbox_id
            )
        })?;
    if json {
        print_json(&exposed)?;
    } else {
        println!("{}", exposed.url);
    }
    Ok(crate::exit::SUCCESS)
}

pub async fn list(client: &CthuluClient, json: bool, args: SandboxArg) -> anyhow::Result<u8> {
    let list = client
        .ports(&args.sandbox_id)
        .await
        .with_context(|| format!("cannot list the ports of sandbox {}", args.sandbox_id))?;
    if json {
        print_json(&list)?;
        return Ok(crate::exit::SUCCESS);
    }
    let mut table = Table::new(&["port", "url", "host address"]);
    for port in &list.ports {
        table.row(vec![
            port.port.to_string(),
            port.url.clone(),
            port.host_address.clone(),
        ]);
    }
    table.print()?;
    Ok(crate::exit::SUCCESS)
}

pub async fn unexpose(client: &CthuluClient, args: PortArgs) -> anyhow::Result<u8> {
    client
        .unexpose_port(&args.sandbox_id, args.port)
        .await
        .with_context(|| {
            format!(
                "cannot stop exposing port {} of sandbox {}",
                args.port, args.sandbox_id
            )
        })?;
    Ok(crate::exit::SUCCESS)
}
