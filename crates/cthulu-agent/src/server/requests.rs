//! Opening a stream: what the agent does with each request of an `OPEN` frame. A request
//! that fails is answered with a reset (an error code and a message naming what failed).

use cthulu_guest_protocol::frame::{StreamId, MAX_CONTROL_PAYLOAD};
use cthulu_guest_protocol::message::{Control, ErrorCode, ErrorReply, ExecRequest, Request};

use super::files::{self, Get, Listing, Put};
use super::process::{self, Follower, Launch};
use super::session::{Stream, MAX_STREAMS, WINDOW};
use super::tunnel::Tunnel;
use super::{configure, release, Server};
use crate::cgroup::Cgroup;
use crate::paths::{self, errno_reply, reply};

impl Server {
    pub(super) fn open(&mut self, stream_id: StreamId, request: Request) {
        let Some(session) = &mut self.session else {
            return;
        };
        // The stream itself is in the table while open (Finished ones too, until the host
        // closes them), so this also bounds what the mux holds.
        if session.streams.len() >= MAX_STREAMS {
            session.reset(
                stream_id,
                reply(
                    ErrorCode::TooLarge,
                    format!("too many open streams (at most {MAX_STREAMS})"),
                ),
            );
            return;
        }
        let result = match request {
            Request::Exec(exec) => self.exec(stream_id, exec),
            Request::Attach { process_id } => self.attach(stream_id, &process_id),
            Request::ProcessList => self.list_processes(stream_id),
            Request::SignalProcess { process_id, signal } => self
                .find(&process_id)
                .map(|key| self.processes[&key].signal(process::signal_number(signal)))
                .map(|()| self.answer(stream_id, Control::Done)),
            Request::FilePut {
                path,
                mode,
                size,
                create_parents,
            } => {
                Put::open(&self.settings.workspace, &path, mode, size, create_parents).map(|put| {
                    let session = self.session.as_mut().expect("checked above");
                    session.streams.insert(stream_id, Stream::Put(put));
                    session.grant(stream_id, WINDOW);
                })
            }
            Request::FileGet { path } => {
                Get::open(&self.settings.workspace, &path).map(|(get, mode, size)| {
                    let session = self.session.as_mut().expect("checked above");
                    session.control(stream_id, Control::FileInfo { mode, size });
                    session.streams.insert(stream_id, Stream::Get(get));
                })
            }
            Request::DirList { path } => {
                Listing::open(&self.settings.workspace, &path).map(|listing| {
                    let session = self.session.as_mut().expect("checked above");
                    session.streams.insert(stream_id, Stream::List(listing));
                })
            }
            Request::Remove { path, recursive } => {
                files::remove(&self.settings.workspace, &path, recursive)
                    .map(|()| self.answer(stream_id, Control::Done))
            }
            Request::PortTunnel { port } => Tunnel::connect(port).map(|tunnel| {
                let session = self.session.as_mut().expect("checked above");
                let connected = !tunnel.connecting;
                session.streams.insert(stream_id, Stream::Tunnel(tunnel));
                if connected {
                    session.control(stream_id, Control::Done);
                    session.grant(stream_id, WINDOW);
                }
            }),
            Request::Configure(config) => configure::apply(&mut self.settings, config)
                .map(|()| self.answer(stream_id, Control::Done)),
            Request::Sync => {
                rustix::fs::sync();
                self.answer(stream_id, Control::Done);
                Ok(())
            }
        };
        if let Err(error) = result {
            if let Some(session) = &mut self.session {
                if let Some(stream) = session.reset(stream_id, error) {
                    release(&mut self.processes, stream_id, stream);
                }
            }
        }
    }

    /// Answers with one control message and closes.
    fn answer(&mut self, stream_id: StreamId, control: Control) {
        if let Some(session) = &mut self.session {
            session.finish(stream_id, Some(control));
        }
    }

    fn find(&self, process_id: &str) -> Result<u64, ErrorReply> {
        self.processes
            .iter()
            .find(|(_, process)| process.process_id == process_id)
            .map(|(key, _)| *key)
            .ok_or_else(|| reply(ErrorCode::NotFound, format!("no process {process_id}")))
    }

    fn exec(&mut self, stream_id: StreamId, request: ExecRequest) -> Result<(), ErrorReply> {
        if !process::valid_process_id(&request.process_id) {
            return Err(reply(
                ErrorCode::InvalidRequest,
                format!(
                    "invalid process id {:?}: 1 to {} bytes of [A-Za-z0-9_-]",
                    request.process_id,
                    process::MAX_PROCESS_ID
                ),
            ));
        }
        if self.find(&request.process_id).is_ok() {
            return Err(reply(
                ErrorCode::AlreadyExists,
                format!("process {} already exists", request.process_id),
            ));
        }
        if request.detached && !self.make_room_for_detached() {
            return Err(reply(
                ErrorCode::TooLarge,
                "too many detached processes running at once",
            ));
        }
        let workspace = &self.settings.workspace;
        let cwd_path = request.cwd.as_deref().unwrap_or("");
        let relative = paths::relative(workspace, cwd_path)?;
        let root = paths::open_root(workspace)?;
        let cwd = paths::open_dir_beneath(&root, &relative)
            .map_err(|errno| errno_reply(errno, "opening the working directory", cwd_path))?;
        let env =
            process::compose_env(&self.settings.workspace_str(), &self.settings.env, &request)?;
        let cgroup = self.settings.cgroup.as_ref().ok();
        let cgroup_procs = cgroup
            .map(|cgroup| {
                cgroup.open_procs().map_err(|error| {
                    reply(
                        ErrorCode::Internal,
                        format!("opening {}: {error}", cgroup.procs_path().display()),
                    )
                })
            })
            .transpose()?;
        let mut process = process::spawn(Launch {
            request: &request,
            env,
            cwd,
            cgroup_procs,
            reset_oom_score: self.settings.vm,
            oom_kills: cgroup.and_then(Cgroup::oom_kills),
        })?;
        if process.detached {
            process.followers.push(Follower {
                stream: stream_id,
                cursors: vec![0; process.outputs.len()],
            });
        } else {
            process.stream = Some(stream_id);
        }
        let key = self.next_key;
        self.next_key += 1;
        self.processes.insert(key, process);
        let session = self.session.as_mut().expect("a session opened the stream");
        session.streams.insert(
            stream_id,
            Stream::Process {
                key,
                stdin: request.stdin,
            },
        );
        session.control(stream_id, Control::Started);
        if request.stdin {
            session.grant(stream_id, WINDOW);
        }
        Ok(())
    }

    fn attach(&mut self, stream_id: StreamId, process_id: &str) -> Result<(), ErrorReply> {
        let key = self.find(process_id)?;
        let process = self.processes.get_mut(&key).expect("just found");
        if !process.detached {
            return Err(reply(
                ErrorCode::InvalidRequest,
                format!("process {process_id} is not detached: its output goes to the stream that started it"),
            ));
        }
        process.followers.push(Follower {
            stream: stream_id,
            cursors: vec![0; process.outputs.len()],
        });
        let stdin = process.stdin.is_some();
        let session = self.session.as_mut().expect("a session opened the stream");
        session
            .streams
            .insert(stream_id, Stream::Process { key, stdin });
        // Before the replayed output, like an exec's.
        session.control(stream_id, Control::Started);
        if stdin {
            session.grant(stream_id, WINDOW);
        }
        Ok(())
    }

    fn list_processes(&mut self, stream_id: StreamId) -> Result<(), ErrorReply> {
        // Shorter command lines until the answer fits in one frame.
        for command_bytes in [256, 64, 16, 0] {
            let processes = self
                .processes
                .values()
                .map(|process| process.entry(command_bytes))
                .collect();
            let control = Control::Processes { processes };
            let fits =
                serde_json::to_vec(&control).is_ok_and(|json| json.len() <= MAX_CONTROL_PAYLOAD);
            if fits {
                self.answer(stream_id, control);
                return Ok(());
            }
        }
        Err(reply(
            ErrorCode::Internal,
            "the process list does not fit in a frame",
        ))
    }
}
