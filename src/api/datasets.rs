//! `/v1/datasets`: upload an archive of class folders (multipart) or import a folder
//! under the import root (JSON), list, describe and delete datasets. An archive or
//! folder that also holds bounding-box annotations becomes a box dataset (task
//! "localize"), whose classes are the box labels.

use std::io::Write;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::AppState;
use super::admission::Admission;
use super::body_limits::announced_length;
use super::pagination::{Page, PageParams};
use super::problem::Problem;
use crate::data::annotations::AnnotationFormat;
use crate::data::archive::{ArchiveLimits, read_archive};
use crate::data::{
    DatasetRefusal, IngestOptions, Ingestor, MAX_REPORT_BYTES, SplitFractions, read_folder, resolve_import,
};
use crate::error::Error;
use crate::store::{DatasetRecord, IngestionLease, ItemRecord, NewDataset, image_key, remove_unreferenced_image};

/// Longest text field of the upload form (name, seed, split, …): they are a few words.
const MAX_FORM_FIELD_BYTES: usize = 64 * 1024;
/// How often (in staged bytes) an upload re-checks the free disk space.
const DISK_CHECK_EVERY_BYTES: usize = 64 * 1024 * 1024;
/// Longest dataset name, in characters.
const MAX_NAME_CHARS: usize = 200;

/// The options of an upload or import besides the images.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetOptions {
    name: Option<String>,
    seed: Option<u64>,
    split: Option<SplitFractions>,
    min_images_per_class: Option<usize>,
    path: Option<String>,
    /// The annotation format's name, for files that detection cannot tell apart.
    annotations: Option<String>,
}

/// Reads the `annotations` option; an unknown name is refused before any file is read.
fn annotation_format(name: Option<&str>) -> Result<Option<AnnotationFormat>, Error> {
    let Some(name) = name else { return Ok(None) };
    AnnotationFormat::parse_name(name).map(Some).ok_or_else(|| {
        let known: Vec<&str> = AnnotationFormat::ALL.iter().map(AnnotationFormat::as_str).collect();
        Error::Unprocessable(format!("annotations: unknown format {name:?}; use one of {}", known.join(", ")))
    })
}

enum Source {
    Upload(tempfile::NamedTempFile),
    Folder(std::path::PathBuf),
}

/// The upload form of `POST /v1/datasets`.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the form that `read_upload` reads field by field.
struct DatasetUpload {
    /// A zip, tar or tar.gz archive: a folder per class of images, or images with their
    /// bounding-box annotations (Pascal VOC / LabelImg XML, VIA CSV or JSON, COCO JSON, or a CSV).
    #[schema(value_type = String, format = Binary)]
    archive: Vec<u8>,
    #[schema(max_length = 200)]
    name: Option<String>,
    /// Seeds the split (default 0).
    seed: Option<u64>,
    /// `train,valid,test` fractions, e.g. `0.8,0.1,0.1` (the default).
    split: Option<String>,
    /// Classes with fewer images are left out and reported (default 10).
    min_images_per_class: Option<usize>,
    /// The annotation format, for files that detection cannot tell apart: `voc`, `via_csv`,
    /// `via_json`, `coco`, `csv`.
    annotations: Option<String>,
}

/// The JSON body of `POST /v1/datasets`: a folder under the server's `--import-root`.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the body that `read_import_request` reads as `DatasetOptions`.
struct DatasetImport {
    /// The folder, relative to --import-root.
    path: String,
    #[schema(max_length = 200)]
    name: Option<String>,
    seed: Option<u64>,
    split: Option<SplitFractions>,
    min_images_per_class: Option<usize>,
    annotations: Option<String>,
}

#[utoipa::path(post, path = "/v1/datasets", tag = "datasets",
    request_body(content(
        (DatasetUpload = "multipart/form-data"),
        (DatasetImport = "application/json"),
    )),
    responses(
        (status = 201, description = "Ingested: the dataset with its classes, splits and the report of rejected files", body = DatasetView),
        (status = 400, description = "`bad-request`: the multipart body is malformed", body = Problem),
        (status = 413, description = "`payload-too-large`: the upload is over --max-upload-bytes, or a form field over 64 KiB", body = Problem),
        (status = 415, description = "`unsupported-media-type`: send multipart/form-data or application/json", body = Problem),
        (status = 422, description = "`unprocessable`: an option is invalid, the form has no `archive`, or imports are off; \
            `not-an-archive`, `empty-archive`, `too-many-archive-entries`, `archive-too-large`, `corrupt-archive`, \
            `unreadable-archive`, `invalid-dataset`, `no-usable-images`, `too-few-classes`, `storage-failed`: \
            the archive or folder cannot become a dataset", body = Problem),
        (status = 429, description = "`overloaded`: --max-concurrent-ingestions uploads are being ingested", body = Problem),
        (status = 507, description = "`insufficient-storage`: the disk would fall under --min-free-disk-bytes", body = Problem),
    ))]
pub async fn create_dataset(
    State(state): State<AppState>,
    Extension(admission): Extension<Admission>,
    request: Request,
) -> Result<(StatusCode, Json<DatasetView>), Error> {
    // Held until the ingestion ends; taken before the body is read.
    let _ingestion = admission.ingestion()?;
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    ensure_free_space(&state, announced_length(request.headers()).unwrap_or(0))?;
    let (options, source) = if content_type.starts_with("multipart/form-data") {
        read_upload(&state, request).await?
    } else if content_type.starts_with("application/json") {
        read_import_request(&state, request).await?
    } else {
        return Err(Error::UnsupportedMediaType(
            "send multipart/form-data with an `archive` file (zip, tar or tar.gz), or JSON {\"path\": …}".into(),
        ));
    };
    if options.name.as_ref().is_some_and(|name| name.chars().count() > MAX_NAME_CHARS) {
        return Err(Error::Unprocessable(format!("name: a dataset name has at most {MAX_NAME_CHARS} characters")));
    }
    let split = options.split.unwrap_or_default();
    split.validate().map_err(Error::Unprocessable)?;
    let ingest_options = IngestOptions {
        decode: state.limits.decode_limits(),
        seed: options.seed.unwrap_or(0),
        splits: split,
        min_images_per_class: options.min_images_per_class.unwrap_or(10),
        annotation_format: annotation_format(options.annotations.as_deref())?,
        max_annotation_bytes: state.datasets.max_annotation_bytes,
    };
    let limits = ArchiveLimits {
        max_entries: state.datasets.max_archive_entries,
        max_entry_bytes: state.datasets.max_entry_bytes,
        max_total_bytes: state.datasets.max_archive_bytes,
    };
    let default_name = match &source {
        Source::Upload(_) => "dataset".to_owned(),
        Source::Folder(path) => path.file_name().map_or("dataset".into(), |n| n.to_string_lossy().into_owned()),
    };

    // Registered before the first image is stored: blob collection leaves images alone
    // while an ingestion may rely on one it found but has not yet referenced.
    let lease = IngestionLease::begin(&state.db).await?;
    // Ingest on a blocking thread: decoding thousands of images is CPU work. If the client
    // goes away, this handler is dropped and the flag stops the ingestion at its next file
    // (what it stored is collected later).
    let blobs = state.blobs.clone();
    let stop = CancellationToken::new();
    let abandoned = stop.clone().drop_guard();
    let (outcome, new_blobs) = tokio::task::spawn_blocking(move || {
        let mut new_blobs = Vec::new();
        let mut store_image = |sha: &str, bytes: &[u8]| -> Result<(), String> {
            if blobs.put(&image_key(sha), bytes).map_err(|e| e.to_string())? {
                new_blobs.push(sha.to_owned());
            }
            Ok(())
        };
        let mut ingestor = Ingestor::new(ingest_options, &mut store_image);
        let mut visit = |entry| {
            if stop.is_cancelled() {
                return Err("the client went away".to_owned());
            }
            ingestor.add(entry)
        };
        let read = match &source {
            Source::Upload(file) => read_archive(file.path(), &limits, &mut visit).map(|_| ()),
            Source::Folder(dir) => read_folder(dir, &limits, &mut visit).map(|_| ()),
        };
        let outcome = read.map_err(DatasetRefusal::from).and_then(|()| Ok(ingestor.finish()?));
        (outcome, new_blobs)
    })
    .await
    .map_err(|e| Error::Internal(format!("ingestion stopped: {e}")))?;
    abandoned.disarm();

    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(refusal) => {
            metrics::counter!("graft_datasets_total", "result" => "refused").increment(1);
            remove_new_images(&state, lease, new_blobs).await;
            return Err(Error::DatasetRefused(refusal));
        }
    };
    metrics::counter!("graft_datasets_total", "result" => "ingested").increment(1);
    metrics::counter!("graft_ingested_images_total").increment(outcome.images.len() as u64);
    metrics::counter!("graft_ingest_rejected_files_total").increment(outcome.report.rejected.total() as u64);
    let task = if outcome.images.iter().any(|image| image.bbox.is_some()) { "localize" } else { "classify" };
    let dataset = NewDataset {
        id: uuid::Uuid::new_v4().to_string(),
        name: options.name.unwrap_or(default_name).chars().take(MAX_NAME_CHARS).collect(),
        task: task.to_owned(),
        seed: options.seed.unwrap_or(0) as i64,
        splits: split.as_array(),
        report: outcome.report.to_bounded_json(MAX_REPORT_BYTES),
        classes: outcome.classes.clone(),
        items: outcome
            .images
            .iter()
            .map(|image| ItemRecord {
                sha256: image.sha256.clone(),
                class_idx: image.class_idx as i64,
                split: image.split.as_str().to_owned(),
                path: image.path.clone(),
                width: i64::from(image.width),
                height: i64::from(image.height),
                bbox: image.bbox.map(|b| [b.x_min, b.y_min, b.x_max, b.y_max].map(widen)),
            })
            .collect(),
    };
    if let Err(e) = state.db.insert_dataset(&dataset).await {
        remove_new_images(&state, lease, new_blobs).await;
        return Err(e.into());
    }
    lease.end().await;
    let record = state.db.dataset(&dataset.id).await?.ok_or_else(|| Error::Internal("the dataset vanished".into()))?;
    Ok((StatusCode::CREATED, Json(describe(&state, &record).await?)))
}

/// Refuses (507) a request that would leave less than `--min-free-disk-bytes` free on the
/// storage root after writing `incoming` bytes.
fn ensure_free_space(state: &AppState, incoming: u64) -> Result<(), Error> {
    match state.blobs.available_bytes() {
        Some(available) => {
            room_for(available, incoming, state.datasets.min_free_disk_bytes).map_err(Error::InsufficientStorage)
        }
        None => Ok(()),
    }
}

fn room_for(available: u64, incoming: u64, reserve: u64) -> Result<(), String> {
    if available >= incoming.saturating_add(reserve) {
        return Ok(());
    }
    Err(format!(
        "the storage has {available} bytes free; this upload needs {incoming} more and graft keeps {reserve} \
         free (--min-free-disk-bytes): free some space (`graft gc`, deleting datasets) and try again"
    ))
}

/// Removes the images a failed ingestion stored, unless another ingestion is live (it may
/// have found them stored and rely on them; blob collection takes them later). Ends the
/// ingestion.
async fn remove_new_images(state: &AppState, lease: IngestionLease, shas: Vec<String>) {
    for sha in shas {
        let _ = remove_unreferenced_image(&state.db, &state.blobs, &sha, Some(&lease.id)).await;
    }
    lease.end().await;
}

async fn read_upload(state: &AppState, request: Request) -> Result<(DatasetOptions, Source), Error> {
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|r| Error::BadRequest(format!("the multipart body could not be read: {}", r.body_text())))?;
    let mut options = DatasetOptions::default();
    let mut archive = None;
    let too_large = |e: &axum::extract::multipart::MultipartError, limit: u64| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge { limit: limit as usize }
        } else {
            Error::BadRequest(format!("the multipart body is malformed: {}", e.body_text()))
        }
    };
    let limit = state.datasets.max_upload_bytes;
    while let Some(mut field) = multipart.next_field().await.map_err(|e| too_large(&e, limit))? {
        let name = field.name().unwrap_or("").to_owned();
        match name.as_str() {
            "archive" | "file" => {
                let mut temp = tempfile::NamedTempFile::new_in(state.blobs.spool_dir())
                    .map_err(|e| Error::Internal(format!("cannot stage the upload: {e}")))?;
                let mut since_check = 0;
                while let Some(chunk) = field.chunk().await.map_err(|e| too_large(&e, limit))? {
                    temp.write_all(&chunk).map_err(|e| Error::Internal(format!("cannot stage the upload: {e}")))?;
                    since_check += chunk.len();
                    // A body without a length is checked as it comes.
                    if since_check >= DISK_CHECK_EVERY_BYTES {
                        since_check = 0;
                        ensure_free_space(state, 0)?;
                    }
                }
                archive = Some(temp);
            }
            "name" | "seed" | "split" | "min_images_per_class" | "annotations" => {
                let text = bounded_text(&mut field, &name).await?;
                apply_text_option(&mut options, &name, &text)?;
            }
            other => {
                return Err(Error::Unprocessable(format!(
                    "unknown form field {other:?}: send `archive` (the file) and optionally `name`, `seed`, \
                     `split`, `min_images_per_class`, `annotations`"
                )));
            }
        }
    }
    let archive = archive.ok_or_else(|| Error::Unprocessable("the form has no `archive` file".into()))?;
    Ok((options, Source::Upload(archive)))
}

fn apply_text_option(options: &mut DatasetOptions, name: &str, text: &str) -> Result<(), Error> {
    let bad = |what: &str| Error::Unprocessable(format!("{name}: {what}"));
    match name {
        "name" => options.name = Some(text.to_owned()),
        "annotations" => {
            // Checked as soon as it arrives, so a typo does not wait for the archive's upload.
            annotation_format(Some(text))?;
            options.annotations = Some(text.to_owned());
        }
        "seed" => options.seed = Some(text.trim().parse().map_err(|_| bad("must be a non-negative integer"))?),
        "min_images_per_class" => {
            options.min_images_per_class = Some(text.trim().parse().map_err(|_| bad("must be a non-negative integer"))?)
        }
        _ => {
            // "0.8,0.1,0.1" or {"train": 0.8, "valid": 0.1, "test": 0.1}
            let parts: Vec<f64> =
                text.split(',').map(|p| p.trim().parse()).collect::<Result<_, _>>().unwrap_or_default();
            options.split = Some(match parts[..] {
                [train, valid, test] => SplitFractions { train, valid, test },
                _ => serde_json::from_str(text).map_err(|_| bad("must be \"train,valid,test\" fractions"))?,
            });
        }
    }
    Ok(())
}

async fn read_import_request(state: &AppState, request: Request) -> Result<(DatasetOptions, Source), Error> {
    // Refused before the body is read: no import can succeed without an import root.
    let root = state.datasets.import_root.as_deref().ok_or_else(|| {
        Error::Unprocessable(
            "imports from the server's disk are off; start graft with --import-root to allow them".into(),
        )
    })?;
    let Json(options): Json<DatasetOptions> = Json::from_request(request, &()).await.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge { limit: state.limits.max_json_bytes }
        } else {
            Error::Unprocessable(r.body_text())
        }
    })?;
    annotation_format(options.annotations.as_deref())?;
    let path = options.path.as_deref().ok_or_else(|| Error::Unprocessable("the JSON body needs a `path`".into()))?;
    let folder = resolve_import(root, path).map_err(Error::Unprocessable)?;
    Ok((options, Source::Folder(folder)))
}

/// Reads a text field of the upload form, at most [`MAX_FORM_FIELD_BYTES`].
async fn bounded_text(field: &mut axum::extract::multipart::Field<'_>, name: &str) -> Result<String, Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| Error::BadRequest(format!("the multipart body is malformed: {}", e.body_text())))?
    {
        if bytes.len() + chunk.len() > MAX_FORM_FIELD_BYTES {
            return Err(Error::FieldTooLarge { field: name.to_owned(), limit: MAX_FORM_FIELD_BYTES });
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| Error::Unprocessable(format!("{name}: the field is not UTF-8 text")))
}

#[utoipa::path(get, path = "/v1/datasets", tag = "datasets", params(PageParams),
    responses(
        (status = 200, description = "A page of datasets, oldest first", body = DatasetList),
        (status = 400, description = "`bad-request`: `limit` or `offset` is out of range", body = Problem),
    ))]
pub async fn list_datasets(
    State(state): State<AppState>,
    query: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<DatasetList>, Error> {
    let page = Page::from_query(query)?;
    let mut records = state.db.datasets_page(page.fetch(), page.offset).await?;
    let next_offset = page.trim(&mut records);
    let mut out = Vec::new();
    for record in records {
        out.push(describe(&state, &record).await?);
    }
    Ok(Json(DatasetList { datasets: out, next_offset }))
}

#[utoipa::path(get, path = "/v1/datasets/{id}", tag = "datasets",
    params(("id" = String, Path, description = "The dataset's id")),
    responses(
        (status = 200, description = "The dataset", body = DatasetView),
        (status = 404, description = "`not-found`: there is no such dataset", body = Problem),
    ))]
pub async fn get_dataset(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<DatasetView>, Error> {
    let record = state.db.dataset(&id).await?.ok_or_else(|| Error::NotFound(format!("there is no dataset {id}")))?;
    Ok(Json(describe(&state, &record).await?))
}

#[utoipa::path(delete, path = "/v1/datasets/{id}", tag = "datasets",
    params(("id" = String, Path, description = "The dataset's id")),
    responses(
        (status = 204, description = "Deleted, with the images no other dataset holds"),
        (status = 404, description = "`not-found`: there is no such dataset", body = Problem),
        (status = 409, description = "`conflict`: queued or running jobs use it", body = Problem),
    ))]
pub async fn delete_dataset(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, Error> {
    if state.db.dataset(&id).await?.is_none() {
        return Err(Error::NotFound(format!("there is no dataset {id}")));
    }
    let active = state.db.active_jobs_on_dataset(&id).await?;
    if active > 0 {
        return Err(Error::Conflict(format!("{active} queued or running jobs use dataset {id}; cancel them first")));
    }
    // An upload in progress may rely on an image this dataset held alone: such images
    // are kept, and blob collection takes them once nothing holds them.
    let orphans = state.db.delete_dataset(&id).await?.unwrap_or_default();
    for sha in orphans {
        let _ = remove_unreferenced_image(&state.db, &state.blobs, &sha, None).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A coordinate as the f64 whose shortest text is the f32's, so that 0.1 is stored
/// and shown as 0.1 rather than 0.10000000149011612.
fn widen(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

async fn describe(state: &AppState, record: &DatasetRecord) -> Result<DatasetView, Error> {
    let counts = state.db.dataset_counts(&record.id).await?;
    let classes = record
        .classes
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let count = |split: &str| {
                counts.iter().filter(|c| c.class_idx == index as i64 && c.split == split).map(|c| c.count).sum::<i64>()
            };
            let (train, valid, test) = (count("train"), count("valid"), count("test"));
            ClassView { index, name: name.clone(), images: train + valid + test, train, valid, test }
        })
        .collect();
    let [train, valid, test] = record.splits;
    Ok(DatasetView {
        id: record.id.clone(),
        name: record.name.clone(),
        created_at: record.created_at,
        task: record.task.clone(),
        seed: record.seed,
        split: SplitFractions { train, valid, test },
        images: counts.iter().map(|c| c.count).sum(),
        classes,
        report: record.report.clone(),
    })
}

#[derive(Serialize, ToSchema)]
pub struct DatasetList {
    /// Oldest first.
    datasets: Vec<DatasetView>,
    /// The `offset` of the next page; `null` on the last.
    next_offset: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct DatasetView {
    id: String,
    name: String,
    /// Unix time in milliseconds.
    created_at: i64,
    /// `classify` (class folders) or `localize` (boxes).
    task: String,
    seed: i64,
    split: SplitFractions,
    images: i64,
    classes: Vec<ClassView>,
    /// What ingestion accepted and rejected, with each rejected file and its reason.
    #[schema(value_type = Object)]
    report: Value,
}

/// One class and its images per split.
#[derive(Serialize, ToSchema)]
struct ClassView {
    index: usize,
    name: String,
    images: i64,
    train: i64,
    valid: i64,
    test: i64,
}

#[cfg(test)]
mod tests {
    use super::room_for;

    #[test]
    fn the_declared_length_and_the_reserve_both_count() {
        assert!(room_for(1_000, 400, 600).is_ok());
        assert!(room_for(1_000, 401, 600).is_err());
        assert!(room_for(1_000, 0, 1_001).is_err());
        assert!(room_for(u64::MAX, u64::MAX, 1).is_ok(), "no overflow");
        assert!(room_for(10, u64::MAX, 1).unwrap_err().contains("--min-free-disk-bytes"));
    }
}
