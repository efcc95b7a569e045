//! `cthulu key create`: makes an API key in the server's database directly.

use std::path::PathBuf;

use anyhow::Context as _;

#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Create an API key; once one exists the server requires a key on every call
    Create(CreateKeyArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateKeyArgs {
    /// A name to recognise the key by
    #[arg(long)]
    pub name: Option<String>,
    /// The server's state directory [default: ~/.cthulu]
    #[arg(long, env = "CTHULU_HOME")]
    pub home: Option<PathBuf>,
}

pub fn run(command: KeyCommand) -> anyhow::Result<u8> {
    match command {
        KeyCommand::Create(args) => {
            let home = super::home_dir(args.home)?;
            let key = cthulu_server::create_api_key(&home, args.name.as_deref())
                .with_context(|| format!("cannot create an API key in {}", home.display()))?;
            println!("{key}");
            eprintln!("This key is shown only once; keep it somewhere safe.");
            eprintln!("From now on the server requires a key on every call. Use it with:");
            eprintln!("  export CTHULU_TOKEN={key}");
            Ok(crate::exit::SUCCESS)
        }
    }
}
