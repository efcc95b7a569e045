//! `cthulu agent ls | show | logs | cancel`.

use anyhow::Context as _;
use cthulu_client::RunStreamItem;

use super::render;
use crate::cli::GlobalArgs;
use crate::output::{age, print_json, Table};

#[derive(Debug, clap::Args)]
pub struct RunArg {
    /// Run id
    pub id: String,
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Run id
    pub id: String,
    /// Keep printing live events until the run ends
    #[arg(long, short = 'f')]
    pub follow: bool,
}

fn prompt_excerpt(prompt: &str) -> String {
    let line = prompt.lines().next().unwrap_or_default();
    if line.chars().count() > 48 || prompt.lines().count() > 1 {
        format!("{}…", line.chars().take(47).collect::<String>())
    } else {
        line.to_owned()
    }
}

pub async fn list(global: &GlobalArgs) -> anyhow::Result<u8> {
    let runs = super::super::client(global)?
        .list_runs()
        .await
        .context("cannot list runs")?;
    if global.json {
        print_json(&runs)?;
        return Ok(crate::exit::SUCCESS);
    }
    let now = cthulu_types::now_ms();
    let mut table = Table::new(&["id", "status", "agent", "age", "cost", "prompt"]);
    for run in &runs.runs {
        table.row(vec![
            run.id.clone(),
            run.status.to_string(),
            run.agent.clone(),
            age(run.created_at_ms, now),
            render::cost(run.cost_usd).unwrap_or_else(|| "-".into()),
            prompt_excerpt(&run.prompt),
        ]);
    }
    table.print()?;
    Ok(crate::exit::SUCCESS)
}

pub async fn show(global: &GlobalArgs, args: RunArg) -> anyhow::Result<u8> {
    let run = super::super::client(global)?
        .get_run(&args.id)
        .await
        .with_context(|| format!("cannot get run {}", args.id))?;
    if global.json {
        print_json(&run)?;
    } else {
        println!("agent: {}", run.agent);
        println!("prompt: {}", run.prompt);
        if !run.env_names.is_empty() {
            println!("env passed: {}", run.env_names.join(", "));
        }
        print!("{}", render::outcome(&run));
    }
    Ok(crate::exit::SUCCESS)
}

pub async fn logs(global: &GlobalArgs, args: LogsArgs) -> anyhow::Result<u8> {
    let client = super::super::client(global)?;
    if args.follow {
        let run = super::run::follow(&client, &args.id, true).await?;
        eprintln!("run {}: {}", run.id, render::summary_line(&run));
        return Ok(crate::exit::SUCCESS);
    }
    // Without --follow: what is stored now, then stop.
    let run = client
        .get_run(&args.id)
        .await
        .with_context(|| format!("cannot get run {}", args.id))?;
    if run.event_count == 0 {
        return Ok(crate::exit::SUCCESS);
    }
    let mut events = client
        .run_events(&args.id, 0)
        .await
        .with_context(|| format!("cannot read the events of run {}", args.id))?;
    while let Some(item) = events.next().await.context("cannot read the events")? {
        let RunStreamItem::Event(event) = item else {
            break;
        };
        if global.json {
            println!("{}", serde_json::to_string(&event)?);
        } else if let Some(text) = render::event(&event) {
            println!("{text}");
        }
        if event.seq >= run.event_count {
            break;
        }
    }
    Ok(crate::exit::SUCCESS)
}

pub async fn cancel(global: &GlobalArgs, args: RunArg) -> anyhow::Result<u8> {
    let run = super::super::client(global)?
        .cancel_run(&args.id)
        .await
        .with_context(|| format!("cannot cancel run {}", args.id))?;
    if global.json {
        print_json(&run)?;
    } else {
        println!("run {}: {}", run.id, render::summary_line(&run));
    }
    Ok(crate::exit::SUCCESS)
}
