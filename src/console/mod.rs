//! The web console: the files under `console/` at the repository root, compiled into the
//! binary and served at `/` (the page) and `/console/…` (its scripts and styles). It is a
//! client of the public API like any other; nothing here knows the API's routes.
//!
//! The console is not part of the API description: it is served outside `/v1`, needs no key
//! to load (it asks for one and sends it with each API call), and every answer carries a
//! Content-Security-Policy that lets the page reach this server only.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "console/"]
struct Assets;

/// What the page may load and call: this server only (`blob:` images are the photos a user
/// drops, shown before and after they are sent).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// `/` and `/console/{file}`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(index)).route("/console/{*file}", get(asset))
}

async fn index() -> Response {
    serve("index.html")
}

async fn asset(Path(file): Path<String>) -> Response {
    serve(&file)
}

fn serve(file: &str) -> Response {
    let Some(asset) = Assets::get(file) else {
        return (StatusCode::NOT_FOUND, "no such console file").into_response();
    };
    let mut headers = HeaderMap::new();
    let mime = asset.metadata.mimetype();
    if let Ok(value) = HeaderValue::from_str(mime) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // The files change with the binary: the browser asks again each time, and the ETag
    // (the file's hash) makes the answer a 304 when nothing changed.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(&format!("\"{}\"", hex::encode(asset.metadata.sha256_hash()))) {
        headers.insert(header::ETAG, value);
    }
    (headers, asset.data.into_owned()).into_response()
}

/// Every file the console is made of, by path (for tests that read them all).
pub fn files() -> impl Iterator<Item = (String, Vec<u8>)> {
    Assets::iter().filter_map(|path| Assets::get(&path).map(|file| (path.into_owned(), file.data.into_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_scripts_are_embedded() {
        let names: Vec<String> = files().map(|(name, _)| name).collect();
        for needed in ["index.html", "app.js", "style.css"] {
            assert!(names.iter().any(|n| n == needed), "{needed} missing from {names:?}");
        }
    }
}
