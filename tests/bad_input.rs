//! Bad input never panics: each case answers problem+json with the right status, and
//! the server answers the next good request.

mod common;

use common::hostile::png_header_only;
use common::*;
use graft::config::Limits;
use serde_json::json;

/// img0.jpg without its last `missing` bytes: the scan data stops before the image does
/// (a decoder that fills the rest with grey would call this a success).
fn photo_cut(missing: usize) -> Vec<u8> {
    let photo = image("img0.jpg");
    photo[..photo.len() - missing].to_vec()
}

async fn assert_still_serving(server: &TestServer) {
    let response = post_image(&server.url, "tiny_nchw", "image/png", "img0.png").await;
    assert_eq!(response.status(), 200, "the server must keep answering after bad input");
}

#[tokio::test]
async fn each_bad_request_gets_a_problem_and_the_server_goes_on() {
    let limits = Limits { max_body_bytes: 64 * 1024, max_pixels: 40_000_000, ..Limits::default() };
    let server = start_server(&fixture_models(), limits).await;
    let http = client();
    let classify = format!("{}/v1/models/tiny_nchw/classify", server.url);
    let truncated_jpeg = {
        let jpeg = image("img0.jpg");
        jpeg[..jpeg.len() / 2].to_vec()
    };
    let mut corrupt_png = image("img0.png");
    let middle = corrupt_png.len() / 2;
    corrupt_png[middle..middle + 16].copy_from_slice(&[0xAB; 16]);

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "text body",
            http.post(&classify).header("content-type", "text/plain").body("hello"),
            415,
            "unsupported-media-type",
        ),
        ("no content type", http.post(&classify).body(image("img0.png")), 415, "unsupported-media-type"),
        (
            "text as png",
            http.post(&classify).header("content-type", "image/png").body("not an image at all"),
            422,
            "not-an-image",
        ),
        (
            "tiff",
            http.post(&classify)
                .header("content-type", "application/octet-stream")
                .body(b"II*\x00\x08\x00\x00\x00".to_vec()),
            415,
            "unsupported-image-format",
        ),
        (
            "truncated jpeg",
            http.post(&classify).header("content-type", "image/jpeg").body(truncated_jpeg),
            422,
            "invalid-image",
        ),
        (
            "jpeg cut two bytes short",
            http.post(&classify).header("content-type", "image/jpeg").body(photo_cut(2)),
            422,
            "invalid-image",
        ),
        (
            "jpeg cut at 90 %",
            http.post(&classify).header("content-type", "image/jpeg").body(photo_cut(image("img0.jpg").len() / 10)),
            422,
            "invalid-image",
        ),
        (
            "corrupt png",
            http.post(&classify).header("content-type", "image/png").body(corrupt_png),
            422,
            "invalid-image",
        ),
        (
            "48 megapixels, refused from the header",
            http.post(&classify).header("content-type", "image/png").body(png_header_only(8000, 6000)),
            422,
            "image-too-large",
        ),
        (
            "raw body over the limit",
            http.post(&classify).header("content-type", "image/png").body(vec![0u8; 100 * 1024]),
            413,
            "payload-too-large",
        ),
        (
            "multipart over the limit",
            http.post(&classify).multipart(
                reqwest::multipart::Form::new().part("file", reqwest::multipart::Part::bytes(vec![0u8; 100 * 1024])),
            ),
            413,
            "payload-too-large",
        ),
        (
            "json over the limit",
            http.post(&classify).json(&json!({ "images": [{ "b64": "A".repeat(100 * 1024) }] })),
            413,
            "payload-too-large",
        ),
        (
            "unknown model",
            http.post(format!("{}/v1/models/nope/classify", server.url))
                .header("content-type", "image/png")
                .body(image("img0.png")),
            404,
            "unknown-model",
        ),
        (
            "top_k zero",
            http.post(format!("{classify}?top_k=0")).header("content-type", "image/png").body(image("img0.png")),
            400,
            "bad-request",
        ),
        (
            "top_k above the class count",
            http.post(format!("{classify}?top_k=11")).header("content-type", "image/png").body(image("img0.png")),
            400,
            "bad-request",
        ),
        (
            "top_k not a number",
            http.post(format!("{classify}?top_k=five")).header("content-type", "image/png").body(image("img0.png")),
            400,
            "bad-request",
        ),
        ("bad base64", http.post(&classify).json(&json!({ "images": [{ "b64": "%%%" }] })), 422, "unprocessable"),
        (
            "malformed json",
            http.post(&classify).header("content-type", "application/json").body("{\"images\": ["),
            422,
            "unprocessable",
        ),
        ("no images in json", http.post(&classify).json(&json!({ "images": [] })), 422, "unprocessable"),
        (
            "text part in multipart",
            http.post(&classify).multipart(reqwest::multipart::Form::new().text("note", "a daisy")),
            422,
            "not-an-image",
        ),
        ("unknown route", http.get(format!("{}/v9/nothing", server.url)), 404, "not-found"),
        ("wrong method", http.delete(&classify), 405, "method-not-allowed"),
    ];
    for (name, request, status, slug) in cases {
        let response = request.send().await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let body = expect_problem(response, status).await;
        assert_eq!(body["type"], format!("urn:graft:problem:{slug}"), "{name}: {body}");
        assert_still_serving(&server).await;
    }
}

#[tokio::test]
async fn a_small_pixel_budget_refuses_ordinary_images() {
    let limits = Limits { max_pixels: 1000, ..Limits::default() };
    let server = start_server(&fixture_models(), limits).await;
    let response = post_image(&server.url, "tiny_nchw", "image/png", "img0.png").await;
    let body = expect_problem(response, 422).await;
    assert!(body["detail"].as_str().unwrap().contains("32×32 = 1024 pixels, over the budget of 1000"), "{body}");
}

#[tokio::test]
async fn a_model_still_loading_is_unavailable_and_not_ready() {
    // A registry whose models were never loaded: readiness is 503, classify is 503.
    let registry = std::sync::Arc::new(graft::serving::ModelRegistry::new(
        graft::zoo::load_manifest_dir(&fixture_models()).unwrap(),
        common::model_runtime(common::cpu(), Limits::default().batching()),
    ));
    let data = tempfile::tempdir().unwrap();
    let state = graft::AppState {
        registry,
        limits: Limits::default(),
        db: graft::store::Db::connect(&common::db::sqlite_url(data.path())).await.unwrap(),
        blobs: graft::store::BlobStore::open(data.path().join("blobs")).unwrap(),
        datasets: graft::config::DatasetSettings::default(),
        wake_workers: std::sync::Arc::new(tokio::sync::Notify::new()),
        auth: Default::default(),
        stopping: std::sync::Arc::new(tokio::sync::watch::channel(false).0),
    };
    let url = serve_app(state).await;
    let ready = client().get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let response = post_image(&url, "tiny_nchw", "image/png", "img0.png").await;
    expect_problem(response, 503).await;
}

/// Found by Schemathesis (`make test`'s schema-based run): an `offset` near i64::MAX
/// overflowed once a page was added to it, and the list answered 500. Offsets are now
/// bounded (0..=1e9) and anything past that is a 400 problem.
#[tokio::test]
async fn list_offsets_past_their_bound_are_refused() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    for list in ["datasets", "jobs"] {
        for offset in ["9223372036854775807", "9223372036854775806", "1000000001"] {
            let url = format!("{}/v1/{list}?limit=1&offset={offset}", server.url);
            let problem = expect_problem(client().get(url).send().await.unwrap(), 400).await;
            assert!(problem["detail"].as_str().unwrap().contains("offset must be between 0 and 1000000000"));
        }
        let url = format!("{}/v1/{list}?limit=200&offset=1000000000", server.url);
        let page: serde_json::Value = client().get(url).send().await.unwrap().json().await.unwrap();
        assert_eq!(page[list], json!([]));
        assert_eq!(page["next_offset"], serde_json::Value::Null);
    }
}
