//! Agent runs: create, list, get, cancel, the archive of changed files, and
//! [`RunEvents`], the Server-Sent Events stream of a run (docs/streaming.md).

use cthulu_types::{CreateRunRequest, Run, RunEvent, RunList};
use reqwest::Method;

use crate::{ClientError, CthuluClient};

/// One item of a run's event stream.
#[derive(Debug, Clone, PartialEq)]
pub enum RunStreamItem {
    Event(RunEvent),
    /// The run has ended; this is it. Nothing follows.
    End(Box<Run>),
}

/// A run's event stream: stored events first, then live ones, then the end.
pub struct RunEvents {
    response: reqwest::Response,
    url: String,
    buffer: Vec<u8>,
    /// The last event id received, to resume with after a dropped connection.
    pub last_event_id: u64,
    ended: bool,
}

/// One parsed SSE event: its `event:` name, `id:` and `data:` lines.
#[derive(Debug, Default, PartialEq)]
struct SseFrame {
    event: String,
    id: Option<String>,
    data: String,
}

/// Takes the first complete SSE event (up to a blank line) off `buffer`; comments and
/// keep-alives are skipped.
fn take_frame(buffer: &mut Vec<u8>) -> Option<SseFrame> {
    loop {
        let at = buffer.windows(2).position(|pair| pair == b"\n\n")?;
        let block = String::from_utf8_lossy(&buffer[..at]).into_owned();
        buffer.drain(..at + 2);
        let mut frame = SseFrame::default();
        let mut any = false;
        for line in block.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => frame.event = value.to_owned(),
                "id" => frame.id = Some(value.to_owned()),
                "data" => {
                    if any {
                        frame.data.push('\n');
                    }
                    frame.data.push_str(value);
                    any = true;
                }
                _ => {}
            }
        }
        if any || !frame.event.is_empty() {
            return Some(frame);
        }
    }
}

impl RunEvents {
    /// The next event; `Ok(None)` after the end.
    pub async fn next(&mut self) -> Result<Option<RunStreamItem>, ClientError> {
        if self.ended {
            return Ok(None);
        }
        loop {
            if let Some(frame) = take_frame(&mut self.buffer) {
                let decode = |detail: String| ClientError::Protocol {
                    url: self.url.clone(),
                    detail,
                };
                if frame.event == "end" {
                    self.ended = true;
                    let run: Run = serde_json::from_str(&frame.data)
                        .map_err(|error| decode(format!("end event: {error}")))?;
                    return Ok(Some(RunStreamItem::End(Box::new(run))));
                }
                let event: RunEvent = serde_json::from_str(&frame.data)
                    .map_err(|error| decode(format!("event {}: {error}", frame.event)))?;
                self.last_event_id = event.seq;
                return Ok(Some(RunStreamItem::Event(event)));
            }
            let chunk = self
                .response
                .chunk()
                .await
                .map_err(|source| ClientError::Request {
                    method: "GET".into(),
                    url: self.url.clone(),
                    source,
                })?;
            match chunk {
                // SSE allows \r\n; one form keeps the parser simple.
                Some(chunk) => self
                    .buffer
                    .extend(chunk.iter().copied().filter(|byte| *byte != b'\r')),
                None => {
                    return Err(ClientError::StreamClosed {
                        url: self.url.clone(),
                    })
                }
            }
        }
    }
}

impl CthuluClient {
    /// `POST /api/v1/runs`.
    pub async fn create_run(&self, request: &CreateRunRequest) -> Result<Run, ClientError> {
        self.post_json(self.api_url(&["runs"]), request).await
    }

    /// `GET /api/v1/runs`, newest first.
    pub async fn list_runs(&self) -> Result<RunList, ClientError> {
        self.get_json(self.api_url(&["runs"])).await
    }

    /// `GET /api/v1/runs/{id}`.
    pub async fn get_run(&self, run_id: &str) -> Result<Run, ClientError> {
        self.get_json(self.api_url(&["runs", run_id])).await
    }

    /// `DELETE /api/v1/runs/{id}`: cancels it and answers the run as it ended.
    pub async fn cancel_run(&self, run_id: &str) -> Result<Run, ClientError> {
        self.send_json(self.request(Method::DELETE, self.api_url(&["runs", run_id])))
            .await
    }

    /// `GET /api/v1/runs/{id}/changes.tar`: the files the agent added or changed.
    pub async fn run_changes_archive(&self, run_id: &str) -> Result<Vec<u8>, ClientError> {
        let url = self.api_url(&["runs", run_id, "changes.tar"]);
        let response = self.send(self.request(Method::GET, url.clone())).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|source| ClientError::Decode {
                url: url.to_string(),
                source,
            })?;
        Ok(bytes.to_vec())
    }

    /// `GET /api/v1/runs/{id}/events` with `Last-Event-ID: after` when `after > 0`.
    pub async fn run_events(&self, run_id: &str, after: u64) -> Result<RunEvents, ClientError> {
        let url = self.api_url(&["runs", run_id, "events"]);
        let mut builder = self
            .request(Method::GET, url.clone())
            .header("accept", "text/event-stream");
        if after > 0 {
            builder = builder.header("last-event-id", after.to_string());
        }
        let response = self.send(builder).await?;
        Ok(RunEvents {
            response,
            url: url.to_string(),
            buffer: Vec::new(),
            last_event_id: after,
            ended: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_taken_whole_and_keep_alives_skipped() {
        let mut buffer =
            b": keep-alive\n\nid: 3\nevent: agent\ndata: {\"a\":1}\n\nevent: end\ndata: x\ndata: y\n\nid: 4\nda"
                .to_vec();
        assert_eq!(
            take_frame(&mut buffer),
            Some(SseFrame {
                event: "agent".into(),
                id: Some("3".into()),
                data: "{\"a\":1}".into()
            })
        );
        assert_eq!(take_frame(&mut buffer).unwrap().data, "x\ny");
        assert_eq!(take_frame(&mut buffer), None);
        assert_eq!(buffer, b"id: 4\nda");
    }
}
