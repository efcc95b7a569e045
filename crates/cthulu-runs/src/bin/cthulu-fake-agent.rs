//! `cthulu-fake-agent`: a stand-in for `claude` (or any CLI agent) in end-to-end tests.
//!
//! Replays a recorded transcript to stdout in pieces, slowly, and can misbehave on
//! request. Its own options come first; everything after `--` is the agent command line
//! a real agent would get, accepted and ignored (or echoed to stderr with `--echo-args`).
//!
//! ```text
//! cthulu-fake-agent --transcript FILE [--chunk-size N] [--delay-ms N] [--exit-code N]
//!                   [--garbage-every N] [--hang] [--require-env NAME] [--echo-args] [-- ARGS...]
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: cthulu-fake-agent --transcript FILE [--chunk-size N] [--delay-ms N] \
[--exit-code N] [--garbage-every N] [--hang] [--require-env NAME] [--echo-args] [-- ARGS...]";

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
            "--" => {
                options.agent_args = args.by_ref().collect();
            }
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    options.transcript = transcript.ok_or("--transcript is required")?;
    Ok(options)
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
