//! `cthulu image build` and `cthulu image ls`: the microVM images in
//! `$CTHULU_HOME/images` (see docs/images.md). Local: no server involved.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cthulu_image::{BuildOptions, Progress, RootfsSource};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::GlobalArgs;
use crate::output::{self, print_json, Table};

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Build (or bring up to date) a microVM image: kernel, initramfs with the guest
    /// agent, optional root filesystem
    Build(BuildArgs),
    /// List the microVM images
    #[command(visible_alias = "list")]
    Ls(ListArgs),
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The image's name
    #[arg(long, default_value = cthulu_image::DEFAULT_IMAGE)]
    pub name: String,
    /// The static guest agent binary [default: $CTHULU_AGENT, else cthulu-agent next to
    /// this binary or in the cargo target directory]
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
    /// Add an ext4 root filesystem: `debootstrap` (bookworm minbase with python3 and git),
    /// a directory, or an OCI / `docker save` .tar file
    #[arg(long, value_name = "debootstrap|DIR|FILE.tar")]
    pub rootfs: Option<String>,
    /// Size of the root filesystem (K/M/G/T, binary) [default: content + 50 %, at least 256M]
    #[arg(long, value_name = "SIZE", requires = "rootfs")]
    pub rootfs_size: Option<String>,
    /// Rebuild everything even when the inputs have not changed
    #[arg(long)]
    pub force: bool,
    /// The state directory [default: ~/.cthulu]
    #[arg(long, env = "CTHULU_HOME")]
    pub home: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// The state directory [default: ~/.cthulu]
    #[arg(long, env = "CTHULU_HOME")]
    pub home: Option<PathBuf>,
}

/// `<home>/images`.
pub fn images_dir(home: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(super::home_dir(home)?.join("images"))
}

pub async fn run(global: &GlobalArgs, command: ImageCommand) -> anyhow::Result<u8> {
    match command {
        ImageCommand::Build(args) => {
            let json = global.json;
            tokio::task::spawn_blocking(move || build(json, args))
                .await
                .context("the image build thread failed")?
        }
        ImageCommand::Ls(args) => list(global.json, args),
    }
}

fn build(json: bool, args: BuildArgs) -> anyhow::Result<u8> {
    let images_dir = images_dir(args.home)?;
    let agent = cthulu_image::find_agent(args.agent.as_deref())?;
    let mut options = BuildOptions::new(&images_dir, agent);
    options.name = args.name;
    options.force = args.force;
    options.rootfs = args
        .rootfs
        .as_deref()
        .map(RootfsSource::parse)
        .transpose()?;
    options.rootfs_size = args
        .rootfs_size
        .as_deref()
        .map(cthulu_image::parse_size)
        .transpose()?;
    options.cache_dir = std::env::var_os(cthulu_image::CACHE_ENV)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from);

    let started = Instant::now();
    let mut display = StepDisplay::new();
    let mut up_to_date = false;
    let built = cthulu_image::build(&options, &mut |event| {
        up_to_date |= matches!(event, Progress::UpToDate { .. });
        display.show(event);
    });
    display.clear();
    let image = built.with_context(|| format!("cannot build image \"{}\"", options.name))?;
    if json {
        print_json(image.manifest())?;
    }
    if up_to_date {
        eprintln!(
            "image \"{}\" is up to date (version {}) in {}",
            image.name(),
            image.version(),
            image.dir().display()
        );
    } else {
        eprintln!(
            "built image \"{}\" (version {}, kernel {}, {}) in {} in {:.1}s",
            image.name(),
            image.version(),
            image.manifest().kernel_version,
            output::bytes(image.manifest().size()),
            image.dir().display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(crate::exit::SUCCESS)
}

/// Shows build steps on stderr: a spinner per step on a terminal, one line per finished
/// step otherwise.
struct StepDisplay {
    terminal: bool,
    spinner: Option<ProgressBar>,
}

impl StepDisplay {
    fn new() -> Self {
        StepDisplay {
            terminal: std::io::stderr().is_terminal(),
            spinner: None,
        }
    }

    fn line(&self, text: String) {
        match &self.spinner {
            Some(spinner) => spinner.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn show(&mut self, event: Progress) {
        match event {
            Progress::Started { label } => {
                if self.terminal {
                    let spinner = ProgressBar::new_spinner();
                    spinner.set_style(
                        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                            .expect("the template is valid"),
                    );
                    spinner.set_message(label);
                    spinner.enable_steady_tick(Duration::from_millis(100));
                    if let Some(previous) = self.spinner.replace(spinner) {
                        previous.finish_and_clear();
                    }
                }
            }
            Progress::Finished { label, bytes } => {
                if let Some(spinner) = self.spinner.take() {
                    spinner.finish_and_clear();
                }
                let size = bytes
                    .map(|bytes| format!(" ({})", output::bytes(bytes)))
                    .unwrap_or_default();
                self.line(format!("done: {label}{size}"));
            }
            Progress::Reused { label } => self.line(format!("kept: {label}")),
            Progress::UpToDate { .. } => {}
        }
    }

    fn clear(&mut self) {
        if let Some(spinner) = self.spinner.take() {
            spinner.finish_and_clear();
        }
    }
}

fn list(json: bool, args: ListArgs) -> anyhow::Result<u8> {
    let images_dir = images_dir(args.home)?;
    let images = cthulu_image::list(&images_dir);
    if json {
        print_json(&images)?;
        return Ok(crate::exit::SUCCESS);
    }
    let mut table = Table::new(&["name", "version", "kernel", "size", "rootfs", "created"]);
    let now = std::time::SystemTime::now();
    for image in &images {
        let created = image
            .created
            .as_deref()
            .and_then(|created| humantime::parse_rfc3339(created).ok())
            .map(|created| {
                let ago = now.duration_since(created).unwrap_or_default();
                format!("{} ago", output::short_duration(ago.as_millis() as u64))
            })
            .unwrap_or_else(|| "-".into());
        table.row(vec![
            image.name.clone(),
            image.version.clone().unwrap_or_else(|| "broken".into()),
            image.kernel_version.clone().unwrap_or_else(|| "-".into()),
            image.size.map(output::bytes).unwrap_or_else(|| "-".into()),
            if image.rootfs { "yes" } else { "no" }.into(),
            created,
        ]);
        if let Some(error) = &image.error {
            eprintln!("warning: {error}");
        }
    }
    table.print()?;
    if images.is_empty() {
        eprintln!(
            "no images in {}; build one with `cthulu image build`",
            images_dir.display()
        );
    }
    Ok(crate::exit::SUCCESS)
}
