//! The three ways a request carries images: a raw image body, multipart/form-data
//! with one or more files, or JSON `{"images": [{"b64": "…"}]}`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{StatusCode, header};
use base64::Engine;
use serde::Deserialize;

use crate::error::Error;

/// Raw image bodies graft accepts; `application/octet-stream` is sniffed.
pub(super) const RAW_IMAGE_TYPES: [&str; 6] =
    ["image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "application/octet-stream"];

/// An 8×8 orange PNG: the description's example of an image.
const ORANGE_PNG_8X8: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAEUlEQVR4nGM4UaGBFTEMLQkAUtVaAV8W4QQAAAAASUVORK5CYII=";

/// One encoded image and how the request named it, for error messages.
pub struct EncodedImage {
    pub source: String,
    pub bytes: Bytes,
}

/// Images as JSON, in request order.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"images": [{"b64": ORANGE_PNG_8X8}]}))]
pub struct JsonImages {
    #[schema(min_items = 1)]
    images: Vec<JsonImage>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonImage {
    /// The encoded image (JPEG, PNG, WebP, GIF or BMP) in base64, or a `data:` URL.
    b64: String,
}

/// Images as form parts: every part is an image, in order, whatever its field name.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Describes the form that `read_multipart` reads part by part.
pub struct ImageParts {
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
}

/// Reads every image of the request, in order. The body limit is enforced by axum's
/// `DefaultBodyLimit`; `body_limit` only names it in the 413 answer.
pub async fn read_images(request: Request, max_images: usize, body_limit: usize) -> Result<Vec<EncodedImage>, Error> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    let limit = body_limit;
    let images = match content_type.as_str() {
        "multipart/form-data" => read_multipart(request, limit, max_images).await?,
        "application/json" => read_json(request, limit).await?,
        raw if RAW_IMAGE_TYPES.contains(&raw) => {
            vec![EncodedImage { source: "the body".into(), bytes: read_body(request, limit).await? }]
        }
        "" => {
            return Err(Error::UnsupportedMediaType(
                "the request has no Content-Type; send an image (image/jpeg, image/png, image/webp, image/gif, image/bmp), multipart/form-data or application/json".into(),
            ));
        }
        other => {
            return Err(Error::UnsupportedMediaType(format!(
                "{other} is not accepted; send an image (image/jpeg, image/png, image/webp, image/gif, image/bmp), multipart/form-data or application/json"
            )));
        }
    };
    if images.is_empty() {
        return Err(Error::Unprocessable("the request carries no images".into()));
    }
    if images.len() > max_images {
        return Err(Error::Unprocessable(format!(
            "the request carries {} images; the limit is {max_images}",
            images.len()
        )));
    }
    Ok(images)
}

pub(super) async fn read_body(request: Request, limit: usize) -> Result<Bytes, Error> {
    Bytes::from_request(request, &()).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge { limit }
        } else {
            Error::BadRequest(format!("the request body could not be read: {}", rejection.body_text()))
        }
    })
}

async fn read_json(request: Request, limit: usize) -> Result<Vec<EncodedImage>, Error> {
    let body = read_body(request, limit).await?;
    let parsed: JsonImages = serde_json::from_slice(&body).map_err(|e| {
        Error::Unprocessable(format!("the JSON body must be {{\"images\": [{{\"b64\": \"…\"}}]}}: {e}"))
    })?;
    parsed
        .images
        .into_iter()
        .enumerate()
        .map(|(index, image)| {
            let data = image.b64.trim();
            // Accept data URLs as browsers produce them.
            let data = data.split_once(";base64,").map_or(data, |(_, payload)| payload);
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .map(|bytes| EncodedImage { source: format!("images[{index}]"), bytes: bytes.into() })
                .map_err(|e| Error::Unprocessable(format!("images[{index}].b64 is not valid base64: {e}")))
        })
        .collect()
}

async fn read_multipart(request: Request, limit: usize, max_images: usize) -> Result<Vec<EncodedImage>, Error> {
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|r| Error::BadRequest(format!("the multipart body could not be read: {}", r.body_text())))?;
    let mut images = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(Error::PayloadTooLarge { limit });
            }
            Err(e) => {
                return Err(Error::BadRequest(format!("the multipart body is malformed: {}", e.body_text())));
            }
        };
        let source = match (field.name(), field.file_name()) {
            (_, Some(file)) => format!("part {} ({file})", images.len()),
            (Some(name), None) => format!("part {} (field {name})", images.len()),
            (None, None) => format!("part {}", images.len()),
        };
        let bytes = field.bytes().await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge { limit }
            } else {
                Error::BadRequest(format!("{source} could not be read: {}", e.body_text()))
            }
        })?;
        images.push(EncodedImage { source, bytes });
        if images.len() > max_images {
            return Err(Error::Unprocessable(format!("the request carries more than {max_images} images")));
        }
    }
    Ok(images)
}
