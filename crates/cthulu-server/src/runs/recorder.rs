//! [`Recorder`]: numbers a run's events, stores them (up to the limit) and broadcasts
//! them to live SSE clients. Storing comes first, so a client that reads the database
//! after subscribing misses nothing (it drops the duplicates by `seq`).

use std::sync::Arc;

use cthulu_types::{RunEvent, RunEventBody, RunStatus};
use tokio::sync::broadcast;

use crate::state::AppState;

pub struct Recorder {
    state: Arc<AppState>,
    run_id: String,
    sender: broadcast::Sender<RunEvent>,
    next_seq: u64,
    max_events: u64,
    truncated: bool,
}

impl Recorder {
    pub fn new(
        state: Arc<AppState>,
        run_id: String,
        sender: broadcast::Sender<RunEvent>,
        max_events: u64,
    ) -> Recorder {
        Recorder {
            state,
            run_id,
            sender,
            next_seq: 1,
            max_events: max_events.max(2),
            truncated: false,
        }
    }

    /// Stores and broadcasts `body`, unless the run's events were cut at the limit: the
    /// last slot below it goes to a notice saying so.
    pub fn record(&mut self, body: RunEventBody) {
        if self.truncated {
            return;
        }
        if self.next_seq >= self.max_events {
            self.truncated = true;
            if let Err(error) = self.state.db.set_run_events_truncated(&self.run_id) {
                tracing::error!(run_id = %self.run_id, %error, "cannot mark events truncated");
            }
            self.emit(RunEventBody::Notice {
                message: format!(
                    "the run printed more than {} events; later ones are not stored (the outcome is still tracked)",
                    self.max_events
                ),
            });
            return;
        }
        self.emit(body);
    }

    /// A status change: always stored, even past the limit.
    pub fn status(&mut self, status: RunStatus, message: Option<String>) {
        self.emit(RunEventBody::Status { status, message });
    }

    fn emit(&mut self, body: RunEventBody) {
        let event = RunEvent {
            seq: self.next_seq,
            at_ms: cthulu_types::now_ms(),
            body,
        };
        self.next_seq += 1;
        if let Err(error) = self.state.db.insert_run_event(&self.run_id, &event) {
            tracing::error!(run_id = %self.run_id, %error, "cannot store a run event");
        }
        // No receiver is fine: nobody is watching.
        let _ = self.sender.send(event);
    }
}
