//! `/v1/datasets/{id}/items`: a dataset's images one page at a time, and a small cached
//! thumbnail of each (what the console's grids and misclassified views show).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::pagination::Page;
use super::problem::Problem;
use crate::error::Error;
use crate::store::{ItemRecord, image_key};
use crate::vision::{THUMBNAIL_SIZES, thumbnail_jpeg};

/// Side of a thumbnail when the request names none.
const DEFAULT_THUMBNAIL_SIZE: u32 = 160;
/// Bytes of thumbnails kept in memory (about 3,000 grid-size JPEGs).
pub const THUMBNAIL_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// How long a browser may keep a thumbnail: an item's image never changes under its hash.
const THUMBNAIL_MAX_AGE_SECONDS: u32 = 86_400;

/// Thumbnails made, by image hash and size, up to [`THUMBNAIL_CACHE_BYTES`].
#[derive(Clone)]
pub struct ThumbnailCache(Arc<quick_cache::sync::Cache<(String, u32), Bytes, JpegBytes>>);

/// Weighs a cached thumbnail by its size in bytes.
#[derive(Clone)]
pub struct JpegBytes;

impl quick_cache::Weighter<(String, u32), Bytes> for JpegBytes {
    fn weight(&self, key: &(String, u32), value: &Bytes) -> u64 {
        (value.len() + key.0.len()) as u64
    }
}

impl ThumbnailCache {
    pub fn new(max_bytes: u64) -> Self {
        // quick_cache wants an estimate of the item count: a grid thumbnail is about 10 kB.
        let items = usize::try_from(max_bytes / 10_000).unwrap_or(usize::MAX).max(16);
        Self(Arc::new(quick_cache::sync::Cache::with_weighter(items, max_bytes, JpegBytes)))
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ItemQuery {
    /// Only this class (its index in the dataset's `classes`).
    #[param(minimum = 0)]
    class: Option<i64>,
    /// Only this split.
    #[param(pattern = "^(train|valid|test)$")]
    split: Option<String>,
    /// Items per page (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// Items to skip: the `next_offset` of the page before.
    #[param(minimum = 0, maximum = 1_000_000_000)]
    offset: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct ItemList {
    /// By class, then split, then path.
    items: Vec<ItemView>,
    /// The `offset` of the next page; `null` on the last.
    next_offset: Option<i64>,
}

/// One image of a dataset.
#[derive(Serialize, ToSchema)]
pub struct ItemView {
    /// The image's SHA-256, which names it in the thumbnail's path.
    sha256: String,
    /// Its class's index in the dataset's `classes`.
    class: i64,
    /// `train`, `valid` or `test`.
    split: String,
    /// Its path in the uploaded archive or folder.
    path: String,
    width: i64,
    height: i64,
    /// In a box dataset, `[x_min, y_min, x_max, y_max]` in pixels of the upright image.
    #[serde(skip_serializing_if = "Option::is_none")]
    bbox: Option<[f64; 4]>,
}

impl From<ItemRecord> for ItemView {
    fn from(item: ItemRecord) -> Self {
        let ItemRecord { sha256, class_idx, split, path, width, height, bbox } = item;
        Self { sha256, class: class_idx, split, path, width, height, bbox }
    }
}

#[utoipa::path(get, path = "/v1/datasets/{id}/items", tag = "datasets",
    params(("id" = String, Path, description = "The dataset's id"), ItemQuery),
    responses(
        (status = 200, description = "A page of the dataset's images", body = ItemList),
        (status = 400, description = "`bad-request`: a query value is out of range or unknown", body = Problem),
        (status = 404, description = "`not-found`: there is no such dataset", body = Problem),
    ))]
pub async fn list_items(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<ItemQuery>, QueryRejection>,
) -> Result<Json<ItemList>, Error> {
    let query = super::problem::read_query(query)?;
    let page = Page::checked(query.limit, query.offset)?;
    if let Some(split) = query.split.as_deref()
        && !matches!(split, "train" | "valid" | "test")
    {
        return Err(Error::BadRequest(format!("split must be train, valid or test; got {split:?}")));
    }
    if query.class.is_some_and(|c| c < 0) {
        return Err(Error::BadRequest("class must be a class index (0 or more)".into()));
    }
    if state.db.dataset(&id).await?.is_none() {
        return Err(Error::NotFound(format!("there is no dataset {id}")));
    }
    let mut items =
        state.db.dataset_items_page(&id, query.class, query.split.as_deref(), page.fetch(), page.offset).await?;
    let next_offset = page.trim(&mut items);
    Ok(Json(ItemList { items: items.into_iter().map(ItemView::from).collect(), next_offset }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ThumbnailQuery {
    /// The longer side in pixels (default 160); an image smaller than this is not enlarged.
    #[param(minimum = 16, maximum = 512)]
    size: Option<u32>,
}

#[utoipa::path(get, path = "/v1/datasets/{id}/items/{sha256}/thumbnail", tag = "datasets",
    params(
        ("id" = String, Path, description = "The dataset's id"),
        ("sha256" = String, Path, description = "The image's SHA-256, as its item lists it"),
        ThumbnailQuery,
    ),
    responses(
        (status = 200, description = "The image, upright, scaled to fit `size` × `size`, as JPEG", content_type = "image/jpeg",
            headers(("etag" = String, description = "The image's hash and size"),
                    ("cache-control" = String, description = "Kept for a day: an item's image never changes"))),
        (status = 304, description = "The `If-None-Match` ETag is current"),
        (status = 400, description = "`bad-request`: `size` is out of range", body = Problem),
        (status = 404, description = "`not-found`: there is no such dataset, or it holds no such image", body = Problem),
    ))]
pub async fn thumbnail(
    State(state): State<AppState>,
    Extension(cache): Extension<ThumbnailCache>,
    Path((id, sha256)): Path<(String, String)>,
    query: Result<Query<ThumbnailQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let query = super::problem::read_query(query)?;
    let size = query.size.unwrap_or(DEFAULT_THUMBNAIL_SIZE);
    if !THUMBNAIL_SIZES.contains(&size) {
        let (low, high) = (THUMBNAIL_SIZES.start(), THUMBNAIL_SIZES.end());
        return Err(Error::BadRequest(format!("size must be between {low} and {high}; got {size}")));
    }
    if state.db.dataset_item(&id, &sha256).await?.is_none() {
        return Err(Error::NotFound(format!("dataset {id} holds no image {sha256}")));
    }
    let etag = format!("\"{sha256}-{size}\"");
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|tags| tags.contains(&etag)) {
        return Ok((StatusCode::NOT_MODIFIED, cache_headers(&etag)).into_response());
    }
    let key = (sha256, size);
    let jpeg = match cache.0.get(&key) {
        Some(jpeg) => jpeg,
        None => {
            let limits = state.limits.decode_limits();
            let (blobs, sha) = (state.blobs.clone(), key.0.clone());
            let made = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, Error> {
                let bytes = blobs.get(&image_key(&sha)).map_err(|e| Error::Internal(e.to_string()))?;
                thumbnail_jpeg(&bytes, &limits, size).map_err(|e| Error::Internal(format!("image {sha}: {e}")))
            })
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
            let jpeg = Bytes::from(made);
            cache.0.insert(key, jpeg.clone());
            jpeg
        }
    };
    let mut headers = cache_headers(&etag);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
    Ok((headers, jpeg).into_response())
}

fn cache_headers(etag: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("private, max-age={THUMBNAIL_MAX_AGE_SECONDS}")) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    headers
}
