//! One SSH connection: public-key login against the operator's `authorized_keys`, then
//! session channels, each running a shell or a command in the VM's sandbox (the same
//! `exec_stream` as the web terminal). Everything else a client may ask for (forwarding,
//! agent, X11, subsystems, most env) is refused and logged.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cthulu_core::{ExecEvent, ExecSpec, ExecStream, UNLIMITED_TIMEOUT};
use cthulu_types::sandbox::Operation;
use cthulu_types::PtySize;
use russh::keys::PublicKey;
use russh::server::VerifiedPublicKey;
use russh::server::{Auth, ChannelOpenHandle, Handle, Msg, PublicKeyOffer, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet};
use tokio::sync::{mpsc, watch};

use super::{keys, SshContext};

/// Session channels one connection may hold at once (OpenSSH's multiplexing opens a
/// few; more is a client hoarding shells).
pub const MAX_CHANNELS: usize = 8;
/// Client input queued for a process before the connection waits for it.
const INPUT_QUEUE: usize = 64;
/// The exit status sent when the process ended without one (a signal, or it could not
/// start), as OpenSSH's 255 for "something went wrong".
const NO_EXIT_CODE: u32 = 255;
/// The env requests a client may make; others are refused (they could change how the
/// sandbox's programs behave: `LD_PRELOAD`, `PATH`, …).
const ALLOWED_ENV: [&str; 2] = ["TERM", "LANG"];

/// What the client sends to a running process.
enum Input {
    Data(Vec<u8>),
    Resize(PtySize),
    Eof,
}

#[derive(Default)]
struct ChannelState {
    pty: Option<PtySize>,
    env: BTreeMap<String, String>,
    /// Set once the shell or command runs.
    input: Option<mpsc::Sender<Input>>,
}

/// The handler of one connection.
pub struct Connection {
    context: Arc<SshContext>,
    peer: Option<SocketAddr>,
    /// Set on login; the login deadline looks at it.
    authenticated: Arc<AtomicBool>,
    channels: HashMap<ChannelId, ChannelState>,
    stopping: watch::Receiver<()>,
}

/// Only public keys are offered; password and keyboard-interactive are never tried.
pub fn login_methods() -> MethodSet {
    MethodSet::from(&[MethodKind::PublicKey][..])
}

impl Connection {
    pub fn new(
        context: Arc<SshContext>,
        peer: Option<SocketAddr>,
        authenticated: Arc<AtomicBool>,
        stopping: watch::Receiver<()>,
    ) -> Connection {
        Connection {
            context,
            peer,
            authenticated,
            channels: HashMap::new(),
            stopping,
        }
    }

    fn refuse(&self, what: &str) {
        tracing::info!(vm_id = self.context.vm_id, peer = ?self.peer, "ssh: refused {what}");
    }

    fn key_is_authorized(&self, key: &PublicKey) -> bool {
        keys::file_authorizes(&self.context.authorized_keys, key)
    }

    /// Starts the channel's shell (`command` `None`) or command and its pump.
    async fn start(
        &mut self,
        channel: ChannelId,
        command: Option<String>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some(state) = self.channels.get_mut(&channel) else {
            return session.channel_failure(channel);
        };
        if state.input.is_some() {
            // One program per channel, as RFC 4254 says.
            return session.channel_failure(channel);
        }
        let spec = process_spec(command.as_deref(), state.pty, &state.env);
        let handle = session.handle();
        let stream = match self
            .context
            .app
            .handle(&self.context.sandbox_id, Operation::Exec)
        {
            Ok(sandbox) => sandbox
                .exec_stream(spec)
                .await
                .map_err(|error| error.to_string()),
            Err(failure) => Err(failure.message),
        };
        let stream = match stream {
            Ok(stream) => stream,
            Err(message) => {
                let vm_id = self.context.vm_id;
                tracing::warn!(vm_id, "ssh: cannot start a process: {message}");
                session.channel_success(channel)?;
                let notice = format!("cthulu: cannot start a process in vm {vm_id}: {message}\r\n");
                session.extended_data(channel, 1, notice.into_bytes())?;
                session.exit_status_request(channel, NO_EXIT_CODE)?;
                session.eof(channel)?;
                return session.close(channel);
            }
        };
        let (sender, receiver) = mpsc::channel(INPUT_QUEUE);
        state.input = Some(sender);
        tokio::spawn(pump(
            stream,
            receiver,
            handle,
            channel,
            self.stopping.clone(),
        ));
        session.channel_success(channel)
    }

    async fn send(&mut self, channel: ChannelId, input: Input) {
        let Some(sender) = self
            .channels
            .get(&channel)
            .and_then(|state| state.input.clone())
        else {
            return;
        };
        // Waiting here is the back-pressure of a process that does not read its input.
        let _ = sender.send(input).await;
    }
}

/// The process of a channel: a login-like shell under a PTY, a plain `sh` reading
/// commands from stdin without one, or `sh -c <command>`. The sandbox's env
/// (`ANTHROPIC_API_KEY` among it) is laid under `env` by the backend.
pub fn process_spec(
    command: Option<&str>,
    pty: Option<PtySize>,
    env: &BTreeMap<String, String>,
) -> ExecSpec {
    let mut spec = match (command, pty) {
        (Some(command), _) => ExecSpec::argv(["/bin/sh", "-c", command]),
        (None, Some(size)) => crate::terminal::session::shell_spec(size),
        (None, None) => ExecSpec::argv(["/bin/sh"]),
    };
    for (name, value) in env {
        spec.env.insert(name.clone(), value.clone());
    }
    spec.tty = pty;
    spec.timeout = UNLIMITED_TIMEOUT;
    spec.max_output_bytes = u64::MAX;
    spec
}

/// The PTY size a client asks for; 0 (unknown) becomes the classic 80×24.
fn pty_size(cols: u32, rows: u32) -> PtySize {
    let clamp = |value: u32, default: u16| match value {
        0 => default,
        value => u16::try_from(value).unwrap_or(u16::MAX),
    };
    PtySize {
        cols: clamp(cols, 80),
        rows: clamp(rows, 24),
    }
}

/// The status SSH reports: the exit code, else 128 + the signal as shells do, else 255.
fn exit_status(exit: &cthulu_core::ExitInfo) -> u32 {
    match (exit.exit_code, exit.signal) {
        (Some(code), _) => code as u32 & 0xff,
        (None, Some(signal)) => 128 + (signal as u32 & 0x7f),
        (None, None) => NO_EXIT_CODE,
    }
}

/// Output to the client and the client's input to the process until the process exits
/// (its status is sent, then EOF and close), the client closes the channel or the
/// server stops. Returning drops the stream, which kills the process.
async fn pump(
    mut stream: Box<dyn ExecStream>,
    mut input: mpsc::Receiver<Input>,
    handle: Handle,
    channel: ChannelId,
    mut stopping: watch::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = stopping.changed() => return,
            event = stream.next_event() => match event {
                Some(ExecEvent::Stdout(data)) => {
                    if handle.data(channel, data).await.is_err() {
                        return;
                    }
                }
                Some(ExecEvent::Stderr(data)) => {
                    if handle.extended_data(channel, 1, data).await.is_err() {
                        return;
                    }
                }
                Some(ExecEvent::Exit(exit)) => {
                    let _ = handle.exit_status_request(channel, exit_status(&exit)).await;
                    let _ = handle.eof(channel).await;
                    let _ = handle.close(channel).await;
                    return;
                }
                None => {
                    let _ = handle.exit_status_request(channel, NO_EXIT_CODE).await;
                    let _ = handle.eof(channel).await;
                    let _ = handle.close(channel).await;
                    return;
                }
            },
            message = input.recv() => {
                let outcome = match message {
                    Some(Input::Data(data)) => stream.write_stdin(&data).await,
                    Some(Input::Resize(size)) => stream.resize(size).await,
                    Some(Input::Eof) => stream.close_stdin().await,
                    // The client closed the channel.
                    None => return,
                };
                if let Err(error) = outcome {
                    tracing::debug!(%error, "ssh input not delivered");
                }
            }
        }
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Reject {
            proceed_with_methods: Some(login_methods()),
            partial_success: false,
        })
    }

    async fn auth_password(&mut self, _user: &str, _password: &str) -> Result<Auth, Self::Error> {
        self.refuse("a password login (only public keys are accepted)");
        Ok(Auth::Reject {
            proceed_with_methods: Some(login_methods()),
            partial_success: false,
        })
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        _user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        self.refuse("a keyboard-interactive login (only public keys are accepted)");
        Ok(Auth::Reject {
            proceed_with_methods: Some(login_methods()),
            partial_success: false,
        })
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Checked here so the client does not sign for a key that would be refused.
        if self.key_is_authorized(offer.public_key) {
            Ok(Auth::Accept)
        } else {
            Ok(Auth::Reject {
                proceed_with_methods: Some(login_methods()),
                partial_success: false,
            })
        }
    }

    /// The user name is not a credential: any name logs in as the sandbox's user.
    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        // Read again: the file may have changed since the offer.
        if self.key_is_authorized(key.public_key) {
            self.authenticated.store(true, Ordering::SeqCst);
            tracing::info!(
                vm_id = self.context.vm_id,
                peer = ?self.peer,
                user,
                key = %keys::fingerprint(key.public_key),
                "ssh login"
            );
            Ok(Auth::Accept)
        } else {
            self.refuse("a key not in the authorized keys");
            Ok(Auth::Reject {
                proceed_with_methods: Some(login_methods()),
                partial_success: false,
            })
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.channels.len() >= MAX_CHANNELS {
            self.refuse("a session channel past the limit");
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        // The handler's callbacks are used, not the channel object: dropping it is fine.
        self.channels.insert(channel.id(), ChannelState::default());
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("an X11 channel");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("port forwarding (direct-tcpip)");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("socket forwarding (direct-streamlocal)");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse("remote port forwarding (tcpip-forward)");
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        _socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse("remote socket forwarding (streamlocal-forward)");
        Ok(false)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse("agent forwarding");
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("X11 forwarding");
        session.channel_failure(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let shown: String = name.chars().take(32).collect();
        self.refuse(&format!(
            "the subsystem {shown:?} (sftp and others are not served)"
        ));
        session.channel_failure(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let allowed = ALLOWED_ENV.contains(&variable_name) && variable_value.len() <= 256;
        match self.channels.get_mut(&channel) {
            Some(state) if allowed && state.input.is_none() => {
                state
                    .env
                    .insert(variable_name.to_owned(), variable_value.to_owned());
                session.channel_success(channel)
            }
            _ => {
                let shown: String = variable_name.chars().take(32).collect();
                self.refuse(&format!("the env request {shown:?} (only TERM and LANG)"));
                session.channel_failure(channel)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(state) if state.input.is_none() => {
                state.pty = Some(pty_size(col_width, row_height));
                if !term.is_empty() && term.len() <= 64 {
                    state.env.insert("TERM".into(), term.to_owned());
                }
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, None, session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        self.start(channel, Some(command), session).await
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.send(channel, Input::Data(data.to_vec())).await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.send(channel, Input::Resize(pty_size(col_width, row_height)))
            .await;
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.send(channel, Input::Eof).await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Dropping the input ends the pump, which kills the process.
        self.channels.remove(&channel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_run_under_sh_with_the_client_pty_and_env() {
        let mut env = BTreeMap::new();
        env.insert("LANG".to_owned(), "C.UTF-8".to_owned());
        let spec = process_spec(Some("echo hi; exit 3"), None, &env);
        assert_eq!(spec.command.to_argv(), ["/bin/sh", "-c", "echo hi; exit 3"]);
        assert_eq!(spec.tty, None);
        assert_eq!(spec.env.get("LANG").map(String::as_str), Some("C.UTF-8"));
        assert_eq!(spec.timeout, UNLIMITED_TIMEOUT);
        let size = pty_size(120, 40);
        let shell = process_spec(None, Some(size), &BTreeMap::new());
        assert_eq!(shell.tty, Some(size));
        assert!(!shell.detach, "closing the channel must kill the shell");
        assert_eq!(
            process_spec(None, None, &env).command.to_argv(),
            ["/bin/sh"]
        );
    }

    #[test]
    fn sizes_and_statuses_are_what_clients_expect() {
        assert_eq!(pty_size(0, 0), PtySize { cols: 80, rows: 24 });
        assert_eq!(pty_size(1_000_000, 50).cols, u16::MAX);
        let exit = |exit_code, signal| cthulu_core::ExitInfo {
            exit_code,
            signal,
            timed_out: false,
            truncated: false,
            oom_killed: false,
        };
        assert_eq!(exit_status(&exit(Some(3), None)), 3);
        assert_eq!(exit_status(&exit(None, Some(9))), 137);
        assert_eq!(exit_status(&exit(None, None)), 255);
    }
}
