//! Typed payloads carried by frames: the handshake, stream requests, control messages and
//! error replies. All of them are JSON objects on the wire (see the crate docs).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::bounded;
use crate::frame::MAX_DATA_PAYLOAD;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// The smallest `max_frame` a peer may announce: anything smaller would make data frames
/// mostly header.
pub const MIN_MAX_FRAME: u32 = 1024;

/// Most versions or features a hello may list.
pub const MAX_HELLO_ITEMS: usize = 64;
/// Most arguments of an argv, or entries of one `dir_entries` message.
pub const MAX_LIST_ITEMS: usize = 4096;
/// Most variables of an exec's `env`.
pub const MAX_ENV_VARS: usize = 1024;

/// The first frame each side sends (kind `HELLO` on stream 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Every protocol version the sender speaks.
    #[serde(deserialize_with = "bounded::vec::<_, _, MAX_HELLO_ITEMS>")]
    pub versions: Vec<u16>,
    /// The largest data payload the sender accepts in one frame (at most
    /// [`MAX_DATA_PAYLOAD`], at least [`MIN_MAX_FRAME`]).
    pub max_frame: u32,
    /// Optional features the sender supports; the session uses the intersection.
    #[serde(deserialize_with = "bounded::vec::<_, _, MAX_HELLO_ITEMS>")]
    pub features: Vec<String>,
}

impl Hello {
    /// A hello for [`PROTOCOL_VERSION`] with the largest data frame this crate allows.
    pub fn new(features: Vec<String>) -> Self {
        Self {
            versions: vec![PROTOCOL_VERSION],
            max_frame: MAX_DATA_PAYLOAD as u32,
            features,
        }
    }
}

/// What both sides agreed on once each has seen the other's hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The highest version both sides speak.
    pub version: u16,
    /// The largest data payload we may send in one frame.
    pub peer_max_frame: u32,
    /// Features both sides announced, sorted.
    pub features: Vec<String>,
}

/// Why the handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("no common protocol version: we speak {ours:?}, the peer speaks {theirs:?}")]
    NoCommonVersion { ours: Vec<u16>, theirs: Vec<u16> },
    #[error("the peer announced a max_frame of {max_frame} bytes, below the minimum of {minimum}")]
    MaxFrameTooSmall { max_frame: u32, minimum: u32 },
}

/// Picks the highest version both hellos list, and what each side may send.
pub fn negotiate(ours: &Hello, theirs: &Hello) -> Result<Negotiated, HandshakeError> {
    let version = ours
        .versions
        .iter()
        .filter(|version| theirs.versions.contains(version))
        .max()
        .copied()
        .ok_or_else(|| HandshakeError::NoCommonVersion {
            ours: ours.versions.clone(),
            theirs: theirs.versions.clone(),
        })?;
    if theirs.max_frame < MIN_MAX_FRAME {
        return Err(HandshakeError::MaxFrameTooSmall {
            max_frame: theirs.max_frame,
            minimum: MIN_MAX_FRAME,
        });
    }
    let mut features: Vec<String> = ours
        .features
        .iter()
        .filter(|feature| theirs.features.contains(feature))
        .cloned()
        .collect();
    features.sort();
    features.dedup();
    Ok(Negotiated {
        version,
        peer_max_frame: theirs.max_frame.min(MAX_DATA_PAYLOAD as u32),
        features,
    })
}

/// What a stream is for: the payload of an `OPEN` frame.
///
/// Paths of file requests are relative to the agent's workspace (set by
/// [`Request::Configure`]) and resolved beneath it: `..`, absolute paths and symlinks that
/// lead out of it are refused with [`ErrorCode::OutsideWorkspace`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Run a command. The agent answers [`Control::Started`] once the process runs (or a
    /// reset: `not_found` for a missing program, `permission_denied` for one that cannot
    /// be executed, naming it). Opener → agent data is stdin, agent → opener data is
    /// stdout (channel main) and stderr (channel stderr); the agent ends with
    /// [`Control::Exit`] then close.
    /// The host closing its direction is the end of stdin (Ctrl-D on a terminal); a
    /// stream the host resets before the exit, or a session that ends, kills the process
    /// (its whole process group), unless the exec is `detached`.
    Exec(ExecRequest),
    /// Follow a process started by an earlier exec (of this or an earlier connection): the
    /// agent answers [`Control::Started`] (or a `not_found` reset), replays the output it kept (the last [`RETAINED_OUTPUT`] bytes per channel),
    /// then streams live output, then [`Control::Exit`] and close. Data from the host is
    /// the process's stdin. Closing the stream leaves the process running.
    Attach { process_id: String },
    /// List the processes the agent knows: one [`Control::Processes`], then close.
    ProcessList,
    /// Deliver a signal to a process's group: [`Control::Done`], then close.
    SignalProcess { process_id: String, signal: Signal },
    /// Write a file: the opener sends `size` bytes of data then closes; the agent answers
    /// [`Control::Done`] (or a reset) and closes. The file is replaced as a whole.
    FilePut {
        path: String,
        mode: u32,
        size: u64,
        /// Create missing parent directories (mode 0755).
        create_parents: bool,
    },
    /// Read a file: the agent answers [`Control::FileInfo`], the file's bytes as data, then
    /// closes.
    FileGet { path: String },
    /// List a directory: the agent answers one or more [`Control::DirEntries`] then closes.
    DirList { path: String },
    /// Remove a file, a symlink (not its target), an empty directory, or with `recursive` a
    /// whole tree: [`Control::Done`], then close. The workspace itself is refused.
    Remove { path: String, recursive: bool },
    /// Connect to a TCP port on the guest's loopback: the agent answers [`Control::Done`]
    /// once connected, then data flows both ways as the raw TCP byte stream.
    PortTunnel { port: u16 },
    /// Set the guest's identity and defaults; sent after every boot and every restore from
    /// a snapshot (a clone must not share its template's identity): [`Control::Done`].
    Configure(GuestConfig),
    /// Flush the guest's filesystems to their disks (before a disk snapshot):
    /// [`Control::Done`].
    Sync,
}

/// How many bytes of output per channel the agent keeps for [`Request::Attach`].
pub const RETAINED_OUTPUT: usize = 1024 * 1024;

/// Most bytes of entropy a [`GuestConfig`] may carry.
pub const MAX_ENTROPY: usize = 512;

/// The payload of [`Request::Configure`]; absent fields leave the setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    /// The hostname (`sethostname`, and `/etc/hostname`).
    pub hostname: Option<String>,
    /// The wall clock, in milliseconds since the Unix epoch (`clock_settime`): a restored
    /// snapshot's clock is as old as the snapshot.
    pub clock_unix_ms: Option<u64>,
    /// Random bytes, hex-encoded, credited to the kernel's pool (`RNDADDENTROPY`), so
    /// clones of one snapshot do not share their random state. At most [`MAX_ENTROPY`].
    pub entropy_hex: Option<String>,
    /// 32 lowercase hex digits written to `/etc/machine-id`.
    pub machine_id: Option<String>,
    /// The workspace: the default cwd and `HOME` of execs, the root of file paths; created
    /// if missing. The agent's own default, `/workspace`, is on an image without a root
    /// disk (initramfs only) a tmpfs of 90% of the guest's RAM: like every file of such an
    /// image, its files live in the guest's memory (and count against the memory limit of
    /// the processes that write them).
    pub workspace: Option<String>,
    /// The sandbox's environment, under each exec's own `env`.
    #[serde(
        default,
        deserialize_with = "bounded::option_map::<_, _, _, MAX_ENV_VARS>"
    )]
    pub env: Option<BTreeMap<String, String>>,
    /// Resource limits of everything the agent runs (see [`GuestLimits`]); absent leaves
    /// them as they are (left out of the JSON then, so an agent that predates them still
    /// reads the config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<GuestLimits>,
}

/// Limits shared by every process the agent starts (execs, detached or not, and their
/// descendants), enforced by the guest kernel: as PID 1 the agent puts each one into the
/// cgroup v2 `/sys/fs/cgroup/sandbox`, while itself and PID 1 stay outside it (and
/// unkillable by the OOM killer, `oom_score_adj` −1000). A field that is absent means no
/// limit (`max`); each set field must be at least 1. An agent that is not PID 1 of a VM
/// (test mode) refuses limits with `unsupported`, and so does one whose kernel gave it no
/// cgroups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestLimits {
    /// Memory of all of them together, in bytes (`memory.max`, rounded down to pages; no
    /// swap: `memory.swap.max` 0). Past it the kernel's OOM killer kills one of them, and
    /// its exit reports `oom_killed`.
    pub memory_bytes: Option<u64>,
    /// Processes and threads alive at once (`pids.max`): a `fork` beyond it fails with
    /// `EAGAIN`.
    pub pids: Option<u64>,
    /// CPU time, in thousandths of a CPU (`cpu.max` = `<millis × 100> 100000`: that many
    /// microseconds per 100 ms period; 1500 is one and a half CPUs). At least 10, the
    /// kernel's smallest quota (1 ms per period).
    pub cpu_millis: Option<u32>,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Executed directly, `argv[0]` looked up in `PATH`.
    #[serde(deserialize_with = "bounded::vec::<_, _, MAX_LIST_ITEMS>")]
    Argv(Vec<String>),
    /// Run through `/bin/sh -c`.
    Shell(String),
}

/// The request of an exec stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Chosen by the host, unique among the agent's processes (at most 64 bytes of
    /// `[A-Za-z0-9_-]`); names the process in [`Request::Attach`] and the others.
    pub process_id: String,
    pub command: Command,
    /// Added to (and overriding) the agent's base environment.
    #[serde(deserialize_with = "bounded::map::<_, _, _, MAX_ENV_VARS>")]
    pub env: BTreeMap<String, String>,
    /// Working directory, relative to the workspace and beneath it; the workspace when
    /// absent.
    pub cwd: Option<String>,
    /// Whether the command's stdin is the stream (else `/dev/null`).
    pub stdin: bool,
    /// Killed (and reported `timed_out`) after this many milliseconds.
    pub timeout_ms: Option<u64>,
    /// Each channel keeps at most this many bytes. A channel that passes it is closed, as
    /// under `| head -c <cap>`: a program that goes on writing gets EPIPE or dies of
    /// SIGPIPE (on a terminal, the single channel's hangup: SIGHUP for its session leader,
    /// EIO for writers), the other channel keeps flowing, and the exit reports `truncated`.
    /// For a detached exec the cap applies the same way; without one, a detached exec keeps
    /// only the last [`RETAINED_OUTPUT`] bytes per channel for attaches, and is not cut.
    pub output_cap: Option<u64>,
    /// Run on a terminal of this size (stdout and stderr merged into channel main).
    pub tty: Option<TtySize>,
    /// Keep running when the stream goes away (and when the host disconnects); re-attach
    /// with [`Request::Attach`].
    pub detached: bool,
}

/// A terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// Signals the host may send to an exec. The same set as the API's `cthulu_types::Signal`,
/// kept apart on purpose: the guest agent is a small static binary that must not pull in
/// the API crate (utoipa and the rest), and the wire format must not change when the API
/// does. The backend maps one to the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Signal {
    Hup,
    Int,
    Quit,
    Kill,
    Usr1,
    Usr2,
    Term,
    Cont,
    Stop,
    Winch,
}

/// How an exec ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitStatus {
    /// Exit code when the process exited.
    pub code: Option<i32>,
    /// Signal number when a signal killed it.
    pub signal: Option<i32>,
    /// The agent killed it because `timeout_ms` passed.
    pub timed_out: bool,
    /// Output went beyond `output_cap` and was cut.
    pub truncated: bool,
    /// Killed by the kernel's OOM killer: it did not exit 0 (it died of `SIGKILL`, or a
    /// shell exited 137 after its child did) while the OOM kill count of the cgroup of
    /// everything the agent runs went up (see [`GuestLimits`]). Always false
    /// where the agent has no cgroups (test mode). Absent from older agents: false; left
    /// out of the JSON when false, so older hosts still read the status.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirEntry {
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    pub mode: u32,
    pub modified_ms: u64,
    /// Where a symlink points, as stored.
    pub link_target: Option<String>,
}

/// One process the agent knows, as [`Control::Processes`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessEntry {
    pub process_id: String,
    /// The command line, for display.
    pub command: String,
    pub detached: bool,
    pub tty: bool,
    /// `None` while it runs.
    pub exit: Option<ExitStatus>,
    pub started_unix_ms: u64,
}

/// The type of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// Messages on an open stream, in order with its data: the payload of a `CONTROL` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// Agent → host: the exec's process started (before any of its output), so the host
    /// knows a spawn failure (a reset) from a process that is quiet.
    Started,
    /// Agent → host: the exec ended (sent after all of its output).
    Exit(ExitStatus),
    /// Host → agent: deliver a signal to the exec.
    Signal { signal: Signal },
    /// Host → agent: the terminal of a tty exec changed size.
    Resize(TtySize),
    /// Agent → host: the file of a `file_get`, before its bytes.
    FileInfo { mode: u32, size: u64 },
    /// Agent → host: part of a `dir_list` answer.
    DirEntries {
        #[serde(deserialize_with = "bounded::vec::<_, _, MAX_LIST_ITEMS>")]
        entries: Vec<DirEntry>,
    },
    /// Agent → host: the answer to [`Request::ProcessList`].
    Processes {
        #[serde(deserialize_with = "bounded::vec::<_, _, MAX_LIST_ITEMS>")]
        processes: Vec<ProcessEntry>,
    },
    /// Agent → host: the request succeeded (`file_put` written, `port_tunnel` connected).
    Done,
}

/// Why a request failed or a stream was abandoned: the payload of a `RESET` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

/// The class of an [`ErrorReply`]; codes this version does not know decode as `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    /// A path leads out of the workspace.
    OutsideWorkspace,
    /// The request needs a directory and got something else, or the reverse.
    NotADirectory,
    IsADirectory,
    /// A directory to remove is not empty and `recursive` was not asked for.
    DirectoryNotEmpty,
    /// A process id that is already in use.
    AlreadyExists,
    PermissionDenied,
    InvalidRequest,
    Unsupported,
    TooLarge,
    ConnectionRefused,
    Cancelled,
    ProtocolViolation,
    Internal,
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(versions: &[u16], max_frame: u32, features: &[&str]) -> Hello {
        Hello {
            versions: versions.to_vec(),
            max_frame,
            features: features.iter().map(|feature| feature.to_string()).collect(),
        }
    }

    #[test]
    fn negotiation_picks_the_highest_common_version_and_shared_features() {
        let ours = hello(&[1, 2, 3], 65536, &["tty", "vsock"]);
        let theirs = hello(&[2, 3, 4], 4096, &["vsock", "zstd"]);
        let negotiated = negotiate(&ours, &theirs).unwrap();
        assert_eq!(negotiated.version, 3);
        assert_eq!(negotiated.peer_max_frame, 4096);
        assert_eq!(negotiated.features, vec!["vsock".to_string()]);
    }

    #[test]
    fn negotiation_without_a_common_version_names_both_lists() {
        let error = negotiate(&hello(&[1], 65536, &[]), &hello(&[2, 3], 65536, &[])).unwrap_err();
        assert_eq!(
            error,
            HandshakeError::NoCommonVersion {
                ours: vec![1],
                theirs: vec![2, 3]
            }
        );
        assert_eq!(
            error.to_string(),
            "no common protocol version: we speak [1], the peer speaks [2, 3]"
        );
    }

    #[test]
    fn a_peer_max_frame_is_capped_and_must_not_be_tiny() {
        let ours = Hello::new(vec![]);
        let huge = negotiate(&ours, &hello(&[1], u32::MAX, &[])).unwrap();
        assert_eq!(huge.peer_max_frame, MAX_DATA_PAYLOAD as u32);
        assert_eq!(
            negotiate(&ours, &hello(&[1], 10, &[])).unwrap_err(),
            HandshakeError::MaxFrameTooSmall {
                max_frame: 10,
                minimum: MIN_MAX_FRAME
            }
        );
    }

    #[test]
    fn unknown_error_codes_decode_as_unknown() {
        let reply: ErrorReply =
            serde_json::from_str(r#"{"code":"disk_on_fire","message":"x"}"#).unwrap();
        assert_eq!(reply.code, ErrorCode::Unknown);
    }

    #[test]
    fn an_exec_request_reads_from_its_documented_json() {
        let json = r#"{"exec":{"process_id":"p1","command":{"argv":["ls"]},"env":{},"cwd":null,
            "stdin":false,"timeout_ms":1000,"output_cap":null,"tty":{"rows":24,"cols":80},
            "detached":false}}"#;
        let request: Request = serde_json::from_str(json).unwrap();
        let Request::Exec(exec) = request else {
            panic!("not an exec: {request:?}")
        };
        assert_eq!(exec.command, Command::Argv(vec!["ls".into()]));
        assert_eq!(exec.tty, Some(TtySize { rows: 24, cols: 80 }));
        let unknown_field = json.replace(r#""env":{}"#, r#""env":{},"uid":0"#);
        let error = serde_json::from_str::<Request>(&unknown_field).unwrap_err();
        assert!(error.to_string().contains("uid"), "{error}");
    }

    #[test]
    fn lists_and_maps_stop_at_their_limits() {
        let argv = |count: usize| {
            let items = vec![r#""a""#; count].join(",");
            format!(r#"{{"argv":[{items}]}}"#)
        };
        let at_limit: Command = serde_json::from_str(&argv(MAX_LIST_ITEMS)).unwrap();
        assert_eq!(at_limit, Command::Argv(vec!["a".into(); MAX_LIST_ITEMS]));
        let error = serde_json::from_str::<Command>(&argv(MAX_LIST_ITEMS + 1)).unwrap_err();
        assert!(
            error.to_string().contains("more than 4096 items"),
            "{error}"
        );

        let env: Vec<String> = (0..=MAX_ENV_VARS)
            .map(|index| format!(r#""V{index}":"x""#))
            .collect();
        let json = format!(
            r#"{{"process_id":"p","command":{{"shell":"env"}},"env":{{{}}},"cwd":null,"stdin":false,"timeout_ms":null,"output_cap":null,"tty":null,"detached":false}}"#,
            env.join(",")
        );
        let error = serde_json::from_str::<ExecRequest>(&json).unwrap_err();
        assert!(
            error.to_string().contains("more than 1024 entries"),
            "{error}"
        );

        let config = format!(r#"{{"env":{{{}}}}}"#, env.join(","));
        let error = serde_json::from_str::<GuestConfig>(&config).unwrap_err();
        assert!(
            error.to_string().contains("more than 1024 entries"),
            "{error}"
        );
        let empty: GuestConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, GuestConfig::default());

        let versions = vec!["1"; MAX_HELLO_ITEMS + 1].join(",");
        let hello = format!(r#"{{"versions":[{versions}],"max_frame":65536,"features":[]}}"#);
        let error = serde_json::from_str::<Hello>(&hello).unwrap_err();
        assert!(error.to_string().contains("more than 64 items"), "{error}");
    }

    #[test]
    fn fields_added_after_the_first_agents_are_optional_both_ways() {
        let status: ExitStatus =
            serde_json::from_str(r#"{"code":null,"signal":9,"timed_out":false,"truncated":false}"#)
                .unwrap();
        assert!(!status.oom_killed);
        let json = serde_json::to_string(&status).unwrap();
        assert!(!json.contains("oom_killed"), "{json}");
        let oom = ExitStatus {
            oom_killed: true,
            ..status
        };
        let json = serde_json::to_string(&oom).unwrap();
        assert!(json.contains(r#""oom_killed":true"#), "{json}");
        assert_eq!(serde_json::from_str::<ExitStatus>(&json).unwrap(), oom);

        let json = serde_json::to_string(&GuestConfig::default()).unwrap();
        assert!(!json.contains("limits"), "{json}");
        let config: GuestConfig =
            serde_json::from_str(r#"{"limits":{"memory_bytes":67108864,"pids":64}}"#).unwrap();
        assert_eq!(
            config.limits,
            Some(GuestLimits {
                memory_bytes: Some(64 << 20),
                pids: Some(64),
                cpu_millis: None,
            })
        );
        let error =
            serde_json::from_str::<GuestConfig>(r#"{"limits":{"swap_bytes":0}}"#).unwrap_err();
        assert!(error.to_string().contains("swap_bytes"), "{error}");
    }

    #[test]
    fn requests_and_controls_are_externally_tagged() {
        let json = serde_json::to_string(&Request::PortTunnel { port: 8080 }).unwrap();
        assert_eq!(json, r#"{"port_tunnel":{"port":8080}}"#);
        assert_eq!(serde_json::to_string(&Control::Done).unwrap(), r#""done""#);
        let control = serde_json::to_string(&Control::Signal {
            signal: Signal::Term,
        })
        .unwrap();
        assert_eq!(control, r#"{"signal":{"signal":"TERM"}}"#);
    }
}
