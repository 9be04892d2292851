//! `/v1/jobs`: submit a fine-tuning job, follow it (JSON or Server-Sent Events), cancel it.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::{Extension, Json};
use futures_util::Stream;
use serde_json::{Value, json};

use super::AppState;
use super::admission::Admission;
use super::pagination::{Page, PageParams};
use crate::error::Error;
use crate::jobs::{JobShape, JobSpec, check_footprint, estimate_footprint, plan_tuning};
use crate::serving::Task;
use crate::store::{JobRecord, JobState};
use crate::train::LocalizeHeadKind;

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
            Error::Unprocessable(format!("the job must be JSON: {}", r.body_text()))
        }
    })?;
    let spec = JobSpec::parse(&body).map_err(Error::Unprocessable)?;
    let dataset = state
        .db
        .dataset(&spec.dataset)
        .await?
        .ok_or_else(|| Error::Unprocessable(format!("there is no dataset {:?}", spec.dataset)))?;
    if state.registry.get(&spec.base_model).is_none() {
        return Err(Error::Unprocessable(format!(
            "there is no base model {:?}; GET /v1/models lists them",
            spec.base_model
        )));
    }
    if let Ok(model) = state.registry.ready(&spec.base_model)
        && let Err(reason) = &model.features
    {
        return Err(Error::Unprocessable(format!("base model {} cannot train heads: {reason}", spec.base_model)));
    }
    if let Ok(model) = state.registry.ready(&spec.base_model) {
        // A base still loading is estimated by the worker when the job starts.
        let counts = state.db.dataset_counts(&dataset.id).await?;
        if let Some(shape) = JobShape::of(&model, &counts, dataset.classes.len()) {
            check_footprint(&estimate_footprint(&spec, &shape), state.limits.max_job_memory_bytes)
                .map_err(Error::Unprocessable)?;
        }
    }
    if let (Some(unfreeze), Some((manifest, _))) = (&spec.unfreeze, state.registry.get(&spec.base_model)) {
        // Reading the base and finding the cut costs a model decode: off the async runtime.
        let unfreeze = unfreeze.to_unfreeze();
        // A localizer's spatial head needs the map inside the tail; without a box_head the
        // base decides as the job will: spatial when its map loaded (or, while it loads, when
        // its manifest names one).
        let has_map = match state.registry.ready(&spec.base_model) {
            Ok(model) => model.spatial.is_ok(),
            Err(_) => manifest.spatial_features.is_some(),
        };
        let needs_spatial =
            spec.task == Task::Localize && spec.box_head.map_or(has_map, |k| k == LocalizeHeadKind::Spatial);
        tokio::task::spawn_blocking(move || plan_tuning(&manifest, &unfreeze, needs_spatial).map(drop))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(|reason| Error::Unprocessable(format!("unfreeze: {reason}")))?;
    }
    let id = uuid::Uuid::new_v4().to_string();
    let model_name = spec.name.clone().unwrap_or_else(|| generated_name(&dataset.name, &spec.base_model, &id));
    if state.registry.get(&model_name).is_some()
        || state.registry.trained(&model_name).is_some()
        || state.db.trained_model(&model_name).await?.is_some()
        || state.db.model_name_pending(&model_name).await?
    {
        return Err(Error::Conflict(format!(
            "a model named {model_name:?} exists or is being trained; choose another `name`"
        )));
    }
    let spec_json = serde_json::to_value(&spec).map_err(|e| Error::Internal(e.to_string()))?;
    let job = JobRecord::queued(&id, &dataset.id, &spec.base_model, &model_name, spec_json);
    state.db.insert_job(&job).await?;
    state.db.append_event(&id, "state", &json!({"state": "queued"})).await?;
    state.wake_workers.notify_one();
    let mut headers = HeaderMap::new();
    if let Ok(location) = format!("/v1/jobs/{id}").parse() {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::ACCEPTED, headers, Json(describe(&state, job).await?)))
}

/// `flowers-efficientnet_lite0-1a2b3c4d`: readable and unique.
fn generated_name(dataset: &str, base: &str, id: &str) -> String {
    let slug: String = dataset
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_ascii_lowercase() } else { '-' })
        .take(40)
        .collect();
    format!("{}-{base}-{}", slug.trim_matches('-'), &id[..8])
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
    let stream = futures_util::stream::unfold(
        (state, id, after, false, permit),
        move |(state, id, after, finished, permit)| async move {
            if finished {
                return None;
            }
            loop {
                let events = match state.db.events_after(&id, after).await {
                    Ok(events) => events,
                    Err(e) => {
                        let event = Event::default().event("error").data(e.to_string());
                        return Some((vec![Ok(event)], (state, id, after, true, permit)));
                    }
                };
                if events.is_empty() {
                    // No final event may ever come: look at the row itself.
                    let ended = matches!(state.db.job(&id).await, Ok(Some(job)) if job.state.is_terminal())
                        || tokio::time::Instant::now() >= until;
                    if ended {
                        return None;
                    }
                    tokio::time::sleep(EVENT_POLL).await;
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
                return Some((batch, (state, id, last, ended, permit)));
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
    let mut out = summary(job)?;
    out["epochs"] = json!(epochs);
    Ok(out)
}

/// A job without its epoch history.
fn summary(job: JobRecord) -> Result<Value, Error> {
    let mut out = serde_json::to_value(&job).map_err(|e| Error::Internal(e.to_string()))?;
    out["model"] = json!(job.model_name);
    if let Some(object) = out.as_object_mut() {
        object.remove("worker");
        object.remove("lease_until");
        object.remove("model_name");
    }
    Ok(out)
}
