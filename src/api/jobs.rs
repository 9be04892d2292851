//! `/v1/jobs`: submit a fine-tuning job, follow it (JSON or Server-Sent Events), cancel it.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::{Extension, Json};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::{AllOfBuilder, RefOr};
use utoipa::{PartialSchema, ToSchema};

use super::AppState;
use super::admission::Admission;
use super::pagination::{Page, PageParams};
use super::problem::Problem;
use crate::error::Error;
use crate::jobs::{JobFields, JobRefusal, MisclassifiedImage, Submission, submit};
use crate::store::{EpochRow, JobRecord, JobState};
use crate::train::TrainConfig;

/// How often the event stream looks for new events (they may come from another process).
const EVENT_POLL: Duration = Duration::from_millis(250);
/// The longest one event stream stays open.
const MAX_STREAM_LIFETIME: Duration = Duration::from_secs(3600);

#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body(content = JobRequest, content_type = "application/json",
        description = "The dataset, the base model and, optionally, how to train (every setting has a default)"),
    responses(
        (status = 202, description = "Queued; `Location` names the job", body = JobView,
            headers(("location" = String, description = "/v1/jobs/{id}"))),
        (status = 409, description = "`model-name-taken`: a model of this name exists or is being trained", body = Problem),
        (status = 413, description = "`payload-too-large`: the body is over --max-json-bytes", body = Problem),
        (status = 415, description = "`unsupported-media-type`: the body is not application/json", body = Problem),
        (status = 422, description = "`invalid-job-spec`, `unknown-dataset`, `unknown-base-model`, `base-cannot-train`, \
            `job-over-memory-budget`, `invalid-unfreeze`: the job cannot run as submitted", body = Problem),
    ))]
pub async fn create_job(
    State(state): State<AppState>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, HeaderMap, Json<JobView>), Error> {
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

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(PageParams),
    responses(
        (status = 200, description = "A page of jobs, newest first, without their epochs", body = JobList),
        (status = 400, description = "`bad-request`: `limit` or `offset` is out of range", body = Problem),
    ))]
pub async fn list_jobs(
    State(state): State<AppState>,
    query: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<JobList>, Error> {
    let page = Page::from_query(query)?;
    let mut records = state.db.jobs_page(page.fetch(), page.offset).await?;
    let next_offset = page.trim(&mut records);
    let mut jobs = Vec::new();
    // A list item leaves out the epoch history (up to one row per epoch); GET /v1/jobs/{id} has it.
    for job in records {
        jobs.push(JobView::of(job, None));
    }
    Ok(Json(JobList { jobs, next_offset }))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job with its epochs", body = JobView),
        (status = 404, description = "`not-found`: there is no such job", body = Problem),
    ))]
pub async fn get_job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<JobView>, Error> {
    let job = find(&state, &id).await?;
    Ok(Json(describe(&state, job).await?))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 202, description = "Cancelled (a queued job), or asked to stop (a running one stops at its next check)", body = JobView),
        (status = 404, description = "`not-found`: there is no such job", body = Problem),
        (status = 409, description = "`conflict`: the job has already ended", body = Problem),
    ))]
pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<JobView>), Error> {
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MisclassifiedQuery {
    /// Only images of this class (a row of the confusion matrix).
    #[param(minimum = 0)]
    true_class: Option<usize>,
    /// Only images predicted as this class (a column of the confusion matrix).
    #[param(minimum = 0)]
    predicted_class: Option<usize>,
    /// Images per page (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// Images to skip: the `next_offset` of the page before.
    #[param(minimum = 0, maximum = 1_000_000_000)]
    offset: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct MisclassifiedList {
    /// The dataset the images belong to: thumbnails are under `/v1/datasets/{dataset_id}/items`.
    dataset_id: String,
    /// Class names by index.
    classes: Vec<String>,
    /// Misclassified images that match the filters, on every page.
    total: usize,
    /// In test order.
    images: Vec<MisclassifiedImage>,
    /// The `offset` of the next page; `null` on the last.
    next_offset: Option<i64>,
}

#[utoipa::path(get, path = "/v1/jobs/{id}/misclassified", tag = "jobs",
    params(("id" = String, Path, description = "The job's id"), MisclassifiedQuery),
    responses(
        (status = 200, description = "The test images the job's model gets wrong (a confusion-matrix cell with both filters)",
            body = MisclassifiedList),
        (status = 400, description = "`bad-request`: a query value is out of range", body = Problem),
        (status = 404, description = "`not-found`: there is no such job", body = Problem),
        (status = 409, description = "`conflict`: the job has not succeeded", body = Problem),
    ))]
pub async fn misclassified(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<MisclassifiedQuery>, QueryRejection>,
) -> Result<Json<MisclassifiedList>, Error> {
    let query = super::problem::read_query(query)?;
    let page = Page::checked(query.limit, query.offset)?;
    let job = find(&state, &id).await?;
    if job.state != JobState::Succeeded {
        return Err(Error::Conflict(format!("job {id} has not succeeded ({})", job.state.as_str())));
    }
    let classes: Vec<String> =
        job.evaluation.as_ref().and_then(|e| serde_json::from_value(e["classes"].clone()).ok()).unwrap_or_default();
    // A job that succeeded before graft stored these has none to list.
    let stored = state.db.job_misclassified(&id).await?.unwrap_or_else(|| json!([]));
    let all: Vec<MisclassifiedImage> =
        serde_json::from_value(stored).map_err(|e| Error::Internal(format!("job {id}'s misclassified images: {e}")))?;
    let matching: Vec<MisclassifiedImage> = all
        .into_iter()
        .filter(|m| query.true_class.is_none_or(|c| m.true_class == c))
        .filter(|m| query.predicted_class.is_none_or(|c| m.predicted_class == c))
        .collect();
    let total = matching.len();
    let mut images: Vec<MisclassifiedImage> =
        matching.into_iter().skip(page.offset as usize).take(page.fetch() as usize).collect();
    let next_offset = page.trim(&mut images);
    Ok(Json(MisclassifiedList { dataset_id: job.dataset_id, classes, total, images, next_offset }))
}

/// Server-Sent Events: every event of the job from the start (or after `Last-Event-ID`),
/// then new ones as they happen; the stream ends after the job's final state, or when the
/// job row is final although no final event was written (a worker that died, a job given
/// up), or after [`MAX_STREAM_LIFETIME`] (a client reconnects with `Last-Event-ID`).
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(
        ("id" = String, Path, description = "The job's id"),
        ("last-event-id" = Option<String>, Header, description = "Resume after this event's id"),
    ),
    responses(
        (status = 200, description = "Server-Sent Events: `state`, `progress`, `epoch`, `resumed`, `evaluation` \
            (each with its id), until the job ends; `shutdown` when the server stops (reconnect with Last-Event-ID)",
            body = JobStreamEvent, content_type = "text/event-stream"),
        (status = 404, description = "`not-found`: there is no such job", body = Problem),
        (status = 429, description = "`overloaded`: --max-event-streams streams are open", body = Problem),
    ))]
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

async fn describe(state: &AppState, job: JobRecord) -> Result<JobView, Error> {
    let epochs = state.db.epochs(&job.id).await?;
    Ok(JobView::of(job, Some(epochs)))
}

/// The body of `POST /v1/jobs`: the job's own fields and the trainer's settings side by side
/// in one object, as `JobSpec::parse` reads them. Described as one object (rather than the
/// two schemas' `allOf`) because each refuses fields it does not know.
pub struct JobRequest;

impl PartialSchema for JobRequest {
    fn schema() -> RefOr<Schema> {
        match (JobFields::schema(), TrainConfig::schema()) {
            (RefOr::T(Schema::Object(mut job)), RefOr::T(Schema::Object(train))) => {
                job.properties.extend(train.properties);
                job.description = Some(
                    "A fine-tuning job. Naming any mini-batch setting (epochs, optimizer, …) trains the head \
                     by mini-batch epochs; naming none fits a linear classifier head by the convex solver."
                        .into(),
                );
                RefOr::T(Schema::Object(job))
            }
            (job, train) => RefOr::T(Schema::AllOf(AllOfBuilder::new().item(job).item(train).build())),
        }
    }
}

impl ToSchema for JobRequest {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        <JobFields as ToSchema>::schemas(schemas);
        <TrainConfig as ToSchema>::schemas(schemas);
    }
}

/// One Server-Sent Event of a job's stream.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the events `job_events` writes with axum's `Event`.
pub struct JobStreamEvent {
    /// The event's sequence number (absent on `shutdown`): send it back as `Last-Event-ID`.
    id: Option<String>,
    /// `state`, `progress`, `epoch`, `resumed`, `evaluation`, `error` or `shutdown`.
    event: String,
    /// The event's JSON object, as text.
    data: String,
}

#[derive(Serialize, ToSchema)]
pub struct JobList {
    /// Newest first.
    jobs: Vec<JobView>,
    /// The `offset` of the next page; `null` on the last.
    next_offset: Option<i64>,
}

/// A job as clients see it: its row without the worker's lease, the model it makes, and
/// (for one job) its epochs.
#[derive(Serialize, ToSchema)]
pub struct JobView {
    id: String,
    dataset_id: String,
    base_model: String,
    /// The model the job registers when it succeeds.
    model: String,
    /// The job as submitted, with every default filled in (the fields of `JobRequest`).
    #[schema(value_type = Object)]
    spec: Value,
    state: JobState,
    /// Why the job failed, for a failed one.
    failure: Option<String>,
    /// The latest progress: `phase`, `eta_seconds`, and the phase's `done` / `total`.
    #[schema(value_type = Object)]
    progress: Value,
    /// The held-out metrics, once the job has succeeded.
    #[schema(value_type = Option<Object>)]
    evaluation: Option<Value>,
    cancel_requested: bool,
    attempts: i64,
    /// Unix time in milliseconds.
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    /// One row per finished epoch (only on `GET /v1/jobs/{id}`).
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
