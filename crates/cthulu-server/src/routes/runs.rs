//! Agent runs: create, list, get, cancel, the event stream (Server-Sent Events) and the
//! archive of changed files.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cthulu_types::{CreateRunRequest, ErrorBody, ErrorCode, Run, RunEvent, RunList};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use super::{ApiJson, ApiQuery};
use crate::error::{ApiFailure, ApiResult};
use crate::state::AppState;

/// Events read from the database at a time while replaying.
const REPLAY_PAGE: usize = 500;
/// Runs listed at most.
const LIST_LIMIT: usize = 1000;

fn not_found(raw: &str) -> ApiFailure {
    ApiFailure::new(ErrorCode::RunNotFound, format!("run {raw} not found"))
        .with_hint("list runs with `cthulu agent ls`")
}

fn run(state: &AppState, raw: &str) -> ApiResult<Run> {
    // Run ids have the shape of sandbox ids; anything else cannot exist.
    if cthulu_types::SandboxId::parse(raw).is_err() {
        return Err(not_found(raw));
    }
    state.db.get_run(raw)?.ok_or_else(|| not_found(raw))
}

#[utoipa::path(
    post, path = "/api/v1/runs", tag = "runs",
    request_body = CreateRunRequest,
    responses(
        (status = 201, description = "Started", body = Run),
        (status = 400, description = "Bad request (an unknown agent: the known ones are named)", body = ErrorBody),
        (status = 404, description = "The sandbox named does not exist", body = ErrorBody),
        (status = 413, description = "The input archive is over the server's limit", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<CreateRunRequest>,
) -> ApiResult<(StatusCode, ApiJson<Run>)> {
    // Decoding and reading a large archive is CPU work: off the async threads.
    let run = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || state.runs.create(&state, request))
            .await
            .map_err(|error| ApiFailure::internal(&error))??
    };
    Ok((StatusCode::CREATED, ApiJson(run)))
}

#[utoipa::path(
    get, path = "/api/v1/runs", tag = "runs",
    responses((status = 200, body = RunList))
)]
pub async fn list(State(state): State<Arc<AppState>>) -> ApiResult<ApiJson<RunList>> {
    Ok(ApiJson(RunList {
        runs: state.db.list_runs(LIST_LIMIT)?,
    }))
}

#[utoipa::path(
    get, path = "/api/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path)),
    responses((status = 200, body = Run), (status = 404, body = ErrorBody))
)]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<ApiJson<Run>> {
    Ok(ApiJson(run(&state, &id)?))
}

#[utoipa::path(
    delete, path = "/api/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The run, cancelled (or as it ended, if it had)", body = Run),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<ApiJson<Run>> {
    run(&state, &id)?;
    state.runs.cancel(&id).await;
    Ok(ApiJson(run(&state, &id)?))
}

#[utoipa::path(
    get, path = "/api/v1/runs/{id}/changes.tar", tag = "runs",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "A tar archive of the files the agent added or changed (empty when none)", content_type = "application/x-tar"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The run has not ended", body = ErrorBody),
    )
)]
pub async fn changes_archive(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let run = run(&state, &id)?;
    if !run.status.is_final() {
        return Err(ApiFailure::new(
            ErrorCode::Conflict,
            format!(
                "run {id} is {}: its changes are known when it ends",
                run.status
            ),
        ));
    }
    let path = state.runs.changes_archive(&id);
    let bytes = match fs_err::tokio::read(&path).await {
        Ok(bytes) => bytes,
        // No changed file: an empty archive (two zero blocks).
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => vec![0u8; 1024],
        Err(error) => return Err(ApiFailure::internal(&error)),
    };
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar")],
        Body::from(bytes),
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Start after this event (as the `Last-Event-ID` header, which wins when both are
    /// given).
    #[serde(default)]
    after: Option<u64>,
}

#[utoipa::path(
    get, path = "/api/v1/runs/{id}/events", tag = "runs",
    params(("id" = String, Path), EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, description = "`text/event-stream`: each stored event (`id:` its seq, `event:` its type, `data:` a RunEvent), then live ones, then `event: end` with the Run", content_type = "text/event-stream", body = RunEvent),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>> {
    run(&state, &id)?;
    let after = match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiFailure::bad_request("Last-Event-ID is not an event id (a number)")
            })?,
        None => query.after.unwrap_or(0),
    };
    // Subscribed before the database is read, so nothing falls between the two.
    let subscription = state.runs.subscribe(&id);
    let (sender, receiver) = mpsc::channel::<Event>(64);
    tokio::spawn(follow(
        state,
        id,
        after,
        subscription.map(|subscription| subscription.events),
        sender,
    ));
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|event| (Ok::<_, std::convert::Infallible>(event), receiver))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn sse_event(event: &RunEvent) -> Event {
    Event::default()
        .id(event.seq.to_string())
        .event(event.body.name())
        .data(serde_json::to_string(event).expect("an event serializes"))
}

/// Sends the stored events after `last`, then live ones, then `end`; stops when the
/// client goes away.
async fn follow(
    state: Arc<AppState>,
    run_id: String,
    mut last: u64,
    mut live: Option<broadcast::Receiver<RunEvent>>,
    sender: mpsc::Sender<Event>,
) {
    macro_rules! send {
        ($event:expr) => {
            if sender.send($event).await.is_err() {
                return;
            }
        };
    }
    loop {
        // Replay what is stored after `last`.
        loop {
            let page = match state.db.run_events_after(&run_id, last, REPLAY_PAGE) {
                Ok(page) => page,
                Err(error) => {
                    tracing::error!(%run_id, %error, "cannot read run events");
                    return;
                }
            };
            let full = page.len() == REPLAY_PAGE;
            for event in page {
                last = event.seq;
                send!(sse_event(&event));
            }
            if !full {
                break;
            }
        }
        let Some(receiver) = live.as_mut() else { break };
        // Then live, until the run ends (the channel closes) or this client lags.
        loop {
            match receiver.recv().await {
                Ok(event) if event.seq > last => {
                    last = event.seq;
                    send!(sse_event(&event));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => {
                    live = None;
                    break;
                }
            }
        }
        // Lagged: read the gap from the database and go on; closed: read the rest.
    }
    let end = match state.db.get_run(&run_id) {
        Ok(Some(run)) => serde_json::to_string(&run).expect("a run serializes"),
        _ => return,
    };
    let _ = sender.send(Event::default().event("end").data(end)).await;
}
