//! `cthulu-fake-agent`: a stand-in for `claude` (or any CLI agent) in end-to-end tests.
//!
//! Replays a recorded transcript to stdout in pieces, slowly, and can misbehave on
//! request. Its own options come first; everything after `--` is the agent command line
//! a real agent would get, accepted and ignored (or echoed to stderr with `--echo-args`).
//!
//! ```text
//! cthulu-fake-agent --transcript FILE [--chunk-size N] [--delay-ms N] [--exit-code N]
//!                   [--garbage-every N] [--hang] [--require-env NAME] [--echo-args]
//!                   [--write PATH=TEXT] [--delete PATH] [--print-env NAME] [--spawn-sleep]
//!                   [--stamps N] [-- ARGS...]
//! ```
//!
//! Before the transcript, `--write` and `--delete` change files in the working directory
//! (an agent editing code), `--print-env` prints a variable's value in an assistant
//! message (to prove a credential arrived, and is redacted), `--spawn-sleep` starts a
//! `sleep` child and names its pid (to prove a cancel kills the whole tree). After it,
//! `--stamps` prints N assistant messages `stamp <unix microseconds>`, `--delay-ms`
//! apart, for measuring how fast events reach a client.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: cthulu-fake-agent --transcript FILE [--chunk-size N] [--delay-ms N] \
[--exit-code N] [--garbage-every N] [--hang] [--require-env NAME] [--echo-args] \
[--write PATH=TEXT] [--delete PATH] [--print-env NAME] [--spawn-sleep] [--stamps N] [-- ARGS...]";

/// A garbage line: not JSON, with invalid UTF-8 in it.
const GARBAGE: &[u8] = b"fake-agent garbage: \xff\xfe not json {\n";

#[derive(Debug)]
struct Options {
    transcript: PathBuf,
    chunk_size: usize,
    delay: Duration,
    exit_code: u8,
    garbage_every: Option<usize>,
    hang: bool,
    require_env: Vec<String>,
    echo_args: bool,
    writes: Vec<(PathBuf, String)>,
    deletes: Vec<PathBuf>,
    print_env: Vec<String>,
    spawn_sleep: bool,
    stamps: usize,
    agent_args: Vec<String>,
}

fn parse_options(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut transcript = None;
    let mut options = Options {
        transcript: PathBuf::new(),
        chunk_size: 4096,
        delay: Duration::ZERO,
        exit_code: 0,
        garbage_every: None,
        hang: false,
        require_env: Vec::new(),
        echo_args: false,
        writes: Vec::new(),
        deletes: Vec::new(),
        print_env: Vec::new(),
        spawn_sleep: false,
        stamps: 0,
        agent_args: Vec::new(),
    };
    fn number<T: std::str::FromStr>(option: &str, value: Option<String>) -> Result<T, String> {
        let value = value.ok_or_else(|| format!("{option} needs a value"))?;
        value
            .parse()
            .map_err(|_| format!("{option}: `{value}` is not a valid number"))
    }
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--transcript" => {
                transcript = Some(PathBuf::from(
                    args.next().ok_or("--transcript needs a file")?,
                ))
            }
            "--chunk-size" => options.chunk_size = number::<usize>(&arg, args.next())?.max(1),
            "--delay-ms" => options.delay = Duration::from_millis(number(&arg, args.next())?),
            "--exit-code" => options.exit_code = number(&arg, args.next())?,
            "--garbage-every" => {
                options.garbage_every = Some(number::<usize>(&arg, args.next())?.max(1))
            }
            "--hang" => options.hang = true,
            "--require-env" => options
                .require_env
                .push(args.next().ok_or("--require-env needs a name")?),
            "--echo-args" => options.echo_args = true,
            "--write" => {
                let spec = args.next().ok_or("--write needs PATH=TEXT")?;
                let (path, text) = spec
                    .split_once('=')
                    .ok_or_else(|| format!("--write: `{spec}` is not PATH=TEXT"))?;
                options.writes.push((PathBuf::from(path), text.to_owned()));
            }
            "--delete" => options
                .deletes
                .push(PathBuf::from(args.next().ok_or("--delete needs a path")?)),
            "--print-env" => options
                .print_env
                .push(args.next().ok_or("--print-env needs a name")?),
            "--spawn-sleep" => options.spawn_sleep = true,
            "--stamps" => options.stamps = number(&arg, args.next())?,
            "--" => {
                options.agent_args = args.by_ref().collect();
            }
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    options.transcript = transcript.ok_or("--transcript is required")?;
    Ok(options)
}

/// One stream-json assistant message holding `text`, as a line.
fn assistant_line(text: &str) -> Vec<u8> {
    let mut line = serde_json::to_vec(&serde_json::json!({
        "type": "assistant",
        "message": {"role": "assistant", "content": [{"type": "text", "text": text}]}
    }))
    .expect("a JSON value serializes");
    line.push(b'\n');
    line
}

fn write_line(line: &[u8]) -> Result<(), String> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(line)
        .and_then(|()| stdout.flush())
        .map_err(|error| format!("write stdout: {error}"))
}

/// What the agent does before replaying: edit files, show an env var, start a child.
fn act(options: &Options) -> Result<(), String> {
    for (path, text) in &options.writes {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|error| format!("create {}: {error}", parent.display()))?;
        }
        std::fs::write(path, format!("{text}\n"))
            .map_err(|error| format!("write {}: {error}", path.display()))?;
    }
    for path in &options.deletes {
        std::fs::remove_file(path)
            .map_err(|error| format!("delete {}: {error}", path.display()))?;
    }
    for name in &options.print_env {
        let text = match std::env::var(name) {
            Ok(value) => format!("env {name}={value}"),
            Err(_) => format!("env {name} is not set"),
        };
        write_line(&assistant_line(&text))?;
    }
    if options.spawn_sleep {
        // Not waited for: it stays in our process group, as an agent's tool would.
        let child = std::process::Command::new("sleep")
            .arg("3600")
            .spawn()
            .map_err(|error| format!("spawn sleep: {error}"))?;
        write_line(&assistant_line(&format!("child pid {}", child.id())))?;
    }
    Ok(())
}

/// `stamp <unix microseconds>` messages, `delay` apart.
fn stamps(count: usize, delay: Duration) -> Result<(), String> {
    for index in 0..count {
        if index > 0 && !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_micros())
            .unwrap_or(0);
        write_line(&assistant_line(&format!("stamp {now}")))?;
    }
    Ok(())
}

/// The transcript with a garbage line after every `every` lines.
fn with_garbage(transcript: &[u8], every: Option<usize>) -> Vec<u8> {
    let Some(every) = every else {
        return transcript.to_vec();
    };
    let mut out = Vec::with_capacity(transcript.len());
    for (index, line) in transcript.split_inclusive(|&b| b == b'\n').enumerate() {
        out.extend_from_slice(line);
        if (index + 1) % every == 0 && line.ends_with(b"\n") {
            out.extend_from_slice(GARBAGE);
        }
    }
    out
}

fn run(options: Options) -> Result<ExitCode, String> {
    if options.echo_args {
        let echoed = serde_json::to_string(&options.agent_args)
            .map_err(|error| format!("encode arguments: {error}"))?;
        eprintln!("{echoed}");
    }
    for name in &options.require_env {
        if std::env::var_os(name).is_none() {
            eprintln!("cthulu-fake-agent: environment variable {name} is not set");
            return Ok(ExitCode::from(3));
        }
    }
    act(&options)?;
    let transcript = std::fs::read(&options.transcript)
        .map_err(|error| format!("read {}: {error}", options.transcript.display()))?;
    let bytes = with_garbage(&transcript, options.garbage_every);
    let mut stdout = std::io::stdout().lock();
    for (index, chunk) in bytes.chunks(options.chunk_size).enumerate() {
        if index > 0 && !options.delay.is_zero() {
            std::thread::sleep(options.delay);
        }
        // A reader that went away is not our failure: stop quietly, like a killed agent.
        if stdout
            .write_all(chunk)
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return Ok(ExitCode::from(options.exit_code));
        }
    }
    drop(stdout);
    if options.stamps > 0 && stamps(options.stamps, options.delay).is_err() {
        return Ok(ExitCode::from(options.exit_code));
    }
    if options.hang {
        // Like an agent stuck forever: only a kill ends it.
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    Ok(ExitCode::from(options.exit_code))
}

fn main() -> ExitCode {
    let options = match parse_options(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("cthulu-fake-agent: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(options) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("cthulu-fake-agent: {error}");
            ExitCode::from(2)
        }
    }
}
