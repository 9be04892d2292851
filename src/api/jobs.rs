//! `/v1/jobs`: submit a fine-tuning job, follow it (JSON or Server-Sent Events), cancel it.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::{Extension, Json};
use futures_util::Stream;
use serde::Serialize;
use serde_json::{Value, json};

use super::AppState;
use super::admission::Admission;
use super::pagination::{Page, PageParams};
use crate::error::Error;
use crate::jobs::{JobRefusal, Submission, submit};
use crate::store::{EpochRow, JobRecord, JobState};

/// How often the event stream looks for new events (they may come from another process).
const EVENT_POLL: Duration = Duration::from_millis(250);
/// The longest one event stream stays open.
const MAX_STREAM_LIFETIME: Duration = Duration::from_secs(3600);

pub async fn create_job(
    State(state): State<AppState>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, HeaderMap, Json<Value>), Error> {
    let Json(body) = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge { limit: state.limits.max_json_bytes }
        } else {
            JobRefusal::InvalidSpec(format!("the job must be JSON: {}", r.body_text())).into()
        }
    })?;
    let submission = Submission {
        db: &state.db,
        registry: &state.registry,
        max_job_memory_bytes: state.limits.max_job_memory_bytes,
    };
    let job = submit(&submission, &body).await?;
    state.wake_workers.notify_one();
    let id = &job.id;
    let mut headers = HeaderMap::new();
    if let Ok(location) = format!("/v1/jobs/{id}").parse() {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::ACCEPTED, headers, Json(describe(&state, job).await?)))
}

pub async fn list_jobs(
    State(state): State<AppState>,
    query: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<Value>, Error> {
    let page = Page::from_query(query)?;
    let mut records = state.db.jobs_page(page.fetch(), page.offset).await?;
    let next_offset = page.trim(&mut records);
    let mut jobs = Vec::new();
    // A list item leaves out the epoch history (up to one row per epoch); GET /v1/jobs/{id} has it.
    for job in records {
        jobs.push(summary(job)?);
    }
    Ok(Json(json!({ "jobs": jobs, "next_offset": next_offset })))
}

pub async fn get_job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, Error> {
    let job = find(&state, &id).await?;
    Ok(Json(describe(&state, job).await?))
}

pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), Error> {
    let job = find(&state, &id).await?;
    if job.state.is_terminal() {
        return Err(Error::Conflict(format!("job {id} has already ended ({})", job.state.as_str())));
    }
    if state.db.cancel_job(&id).await? == Some(JobState::Cancelled) {
        state.db.append_event(&id, "state", &json!({"state": "cancelled"})).await?;
    }
    let job = find(&state, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(describe(&state, job).await?)))
}

/// Server-Sent Events: every event of the job from the start (or after `Last-Event-ID`),
/// then new ones as they happen; the stream ends after the job's final state, or when the
/// job row is final although no final event was written (a worker that died, a job given
/// up), or after [`MAX_STREAM_LIFETIME`] (a client reconnects with `Last-Event-ID`).
pub async fn job_events(
    State(state): State<AppState>,
    Extension(admission): Extension<Admission>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Error> {
    find(&state, &id).await?;
    // Held by the stream, so given back when it ends or its client leaves.
    let permit = admission.event_stream()?;
    let after: i64 =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
    let until = tokio::time::Instant::now() + MAX_STREAM_LIFETIME;
    let stopping = state.stopping.subscribe();
    let stream = futures_util::stream::unfold(
        (state, id, after, false, permit, stopping),
        move |(state, id, after, finished, permit, mut stopping)| async move {
            if finished {
                return None;
            }
            loop {
                if *stopping.borrow_and_update() {
                    // A last event, so that the client knows to reconnect (to another replica,
                    // or after the restart) with Last-Event-ID rather than take the close as
                    // the job's end.
                    let data = serde_json::json!({"reason": "the server is stopping", "last_event_id": after});
                    let event = Event::default().event("shutdown").data(data.to_string());
                    return Some((vec![Ok(event)], (state, id, after, true, permit, stopping)));
                }
                let events = match state.db.events_after(&id, after).await {
                    Ok(events) => events,
                    Err(e) => {
                        let event = Event::default().event("error").data(e.to_string());
                        return Some((vec![Ok(event)], (state, id, after, true, permit, stopping)));
                    }
                };
                if events.is_empty() {
                    // No final event may ever come: look at the row itself.
                    let ended = matches!(state.db.job(&id).await, Ok(Some(job)) if job.state.is_terminal())
                        || tokio::time::Instant::now() >= until;
                    if ended {
                        return None;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(EVENT_POLL) => {}
                        _ = stopping.changed() => {}
                    }
                    continue;
                }
                let last = events.last().map_or(after, |e| e.seq);
                let ended = events.iter().any(|e| {
                    e.kind == "state" && matches!(e.data["state"].as_str(), Some("succeeded" | "failed" | "cancelled"))
                });
                let batch = events
                    .into_iter()
                    .map(|e| Ok(Event::default().id(e.seq.to_string()).event(e.kind).data(e.data.to_string())))
                    .collect::<Vec<_>>();
                return Some((batch, (state, id, last, ended, permit, stopping)));
            }
        },
    );
    let stream = futures_util::StreamExt::flat_map(stream, futures_util::stream::iter);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn find(state: &AppState, id: &str) -> Result<JobRecord, Error> {
    state.db.job(id).await?.ok_or_else(|| Error::NotFound(format!("there is no job {id}")))
}

async fn describe(state: &AppState, job: JobRecord) -> Result<Value, Error> {
    let epochs = state.db.epochs(&job.id).await?;
    to_json(JobView::of(job, Some(epochs)))
}

/// A job without its epoch history.
fn summary(job: JobRecord) -> Result<Value, Error> {
    to_json(JobView::of(job, None))
}

fn to_json(view: JobView) -> Result<Value, Error> {
    serde_json::to_value(view).map_err(|e| Error::Internal(e.to_string()))
}

/// A job as clients see it: its row without the worker's lease, the model it makes, and
/// (for one job) its epochs.
#[derive(Serialize)]
struct JobView {
    id: String,
    dataset_id: String,
    base_model: String,
    model: String,
    spec: Value,
    state: JobState,
    failure: Option<String>,
    progress: Value,
    evaluation: Option<Value>,
    cancel_requested: bool,
    attempts: i64,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epochs: Option<Vec<EpochRow>>,
}

impl JobView {
    fn of(job: JobRecord, epochs: Option<Vec<EpochRow>>) -> Self {
        Self {
            id: job.id,
            dataset_id: job.dataset_id,
            base_model: job.base_model,
            model: job.model_name,
            spec: job.spec,
            state: job.state,
            failure: job.failure,
            progress: job.progress,
            evaluation: job.evaluation,
            cancel_requested: job.cancel_requested,
            attempts: job.attempts,
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            epochs,
        }
    }
}
