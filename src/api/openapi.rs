//! The OpenAPI 3.1 description of the HTTP API. Each handler carries its `#[utoipa::path]`
//! and the router registers handlers through `utoipa_axum::routes!`, so what is served and
//! what is described come from one list (`super::routes`). Served at `/openapi.json`, with
//! Swagger UI at `/docs`; committed as `docs/openapi.json` (`graft openapi` writes it, and a
//! test fails when the two differ).
//!
//! The answers every route can give (the key check, the rate limit, the request deadline,
//! an unreachable database, an internal error) are added here to every operation, so the
//! handlers list only their own.

use utoipa::openapi::path::Operation;
use utoipa::openapi::request_body::{RequestBody, RequestBodyBuilder};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Spec, Ref, RefOr, Required, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::auth::needs_key;
use super::images::{ImageParts, JsonImages, RAW_IMAGE_TYPES};
use super::problem::Problem;

/// The media type of every error answer (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "graft",
        description = "Serve and fine-tune ImageNet ONNX models over HTTP: top-k labels and boxes from \
            pretrained and trained models, datasets uploaded as archives, fine-tuning jobs with live \
            progress, and trained models exported as ONNX.\n\nEvery error is `application/problem+json` \
            (RFC 9457) whose `type` is `urn:graft:problem:<name>`; each operation lists the names it \
            can answer with.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "inference", description = "Labels and boxes for images"),
        (name = "models", description = "Pretrained and trained models, loaded and unloaded live"),
        (name = "datasets", description = "Labelled images uploaded as archives or imported from the server's disk"),
        (name = "jobs", description = "Fine-tuning jobs: submit, follow, cancel"),
        (name = "operations", description = "Health, readiness and metrics"),
        (name = "v2", description = "The Open Inference Protocol (KServe v2): health, metadata and inference for \
            every model, with the binary tensor and classification extensions; errors are `{\"error\": …}`"),
    ),
    components(schemas(Problem, ImageParts, JsonImages)),
)]
pub struct ApiDoc;

/// Completes the description the router collected: the key scheme, the answers any route
/// may give, and problem bodies marked with their media type.
pub fn finish(mut spec: Spec) -> Spec {
    describe_versions(&mut spec);
    CommonAnswers.modify(&mut spec);
    spec
}

/// The v2 routes under `/versions/{version}` answer as the routes without it (with a 404 for
/// a version other than `1`): their body and answers are copied from those.
fn describe_versions(spec: &mut Spec) {
    let versioned: Vec<String> =
        spec.paths.paths.keys().filter(|path| path.contains("/versions/{version}")).cloned().collect();
    for path in versioned {
        let plain = path.replace("/versions/{version}", "");
        let Some(source) = spec.paths.paths.get(&plain).cloned() else { continue };
        let Some(item) = spec.paths.paths.get_mut(&path) else { continue };
        for (source, target) in [(source.get, item.get.as_mut()), (source.post, item.post.as_mut())] {
            if let (Some(source), Some(target)) = (source, target) {
                target.request_body = source.request_body;
                target.responses = source.responses;
            }
        }
    }
}

struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, spec: &mut Spec) {
        let components = spec.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key from --api-key or --api-key-file, as `Authorization: Bearer <key>`. \
                 Needed only when keys are configured; inference needs one only with --private-inference.",
                    ))
                    .build(),
            ),
        );
        for (path, item) in spec.paths.paths.iter_mut() {
            for (method, operation) in operations(item) {
                if operation.tags.as_ref().is_some_and(|tags| tags.iter().any(|t| t == "inference")) {
                    describe_inference(operation);
                }
                add_common_answers(path, method, operation);
                mark_problem_bodies(operation);
            }
        }
    }
}

fn operations(item: &mut utoipa::openapi::PathItem) -> Vec<(axum::http::Method, &mut Operation)> {
    use axum::http::Method;
    [
        (Method::GET, item.get.as_mut()),
        (Method::PUT, item.put.as_mut()),
        (Method::POST, item.post.as_mut()),
        (Method::DELETE, item.delete.as_mut()),
        (Method::PATCH, item.patch.as_mut()),
        (Method::HEAD, item.head.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.map(|op| (method, op)))
    .collect()
}

fn add_common_answers(path: &str, method: axum::http::Method, operation: &mut Operation) {
    // The routes behind the rate limit and the request deadline (`super::routes`).
    let api = path.starts_with("/v1/") || path.starts_with("/v2/models/");
    let needs_key_always = needs_key(&method, path, false);
    let needs_key_when_private = needs_key(&method, path, true);
    if needs_key_always {
        operation.security = Some(vec![key_requirement()]);
    } else if needs_key_when_private {
        // Open unless the server runs with --private-inference.
        operation.security = Some(vec![SecurityRequirement::default(), key_requirement()]);
    }
    if needs_key_when_private {
        add_problem(
            operation,
            "401",
            "`unauthorized`: keys are configured and the request carries none, or one that is not valid",
        );
    }
    if api {
        add_problem(
            operation,
            "429",
            "`rate-limited`: the caller is over --rate-limit-per-second (Retry-After says when to try again)",
        );
        add_problem(
            operation,
            "503",
            "`timeout`: the request took longer than --request-timeout-seconds; `unavailable`: the \
             database cannot be reached (Retry-After: 1)",
        );
    }
    add_problem(operation, "500", "`internal`: graft hit an internal error; the request was not completed");
}

/// What the inference operations (classify, localize) share: their body and the answers
/// to images that cannot be read or served.
fn describe_inference(operation: &mut Operation) {
    operation.request_body = Some(RefOr::T(image_request_body()));
    let answers = [
        ("413", "`payload-too-large`: the body is over --max-body-bytes"),
        (
            "415",
            "`unsupported-media-type`: an accepted Content-Type is needed; `unsupported-image-format`: the image \
             is not JPEG, PNG, WebP, GIF or BMP",
        ),
        (
            "422",
            "`not-an-image`, `invalid-image`, `image-too-large` (over --max-pixels), `too-many-jpeg-scans`; \
             `unprocessable`: no images, too many, or invalid base64",
        ),
        ("429", "`overloaded`: the model's queue is full or too many bytes are in flight"),
        (
            "503",
            "`model-loading` (its load took longer than `--model-load-wait`), `model-failed`, `model-unloaded`, `model-memory` (it does not fit `--max-model-memory` beside the pinned models): the model cannot serve now",
        ),
    ];
    for (status, what) in answers {
        add_problem(operation, status, what);
    }
}

/// The body of the inference operations, as `super::images::read_images` reads it: one
/// image of an accepted type, or several as form parts or JSON.
fn image_request_body() -> RequestBody {
    let binary = || {
        let bytes = ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .build();
        Content::new(Some(bytes))
    };
    let body = RAW_IMAGE_TYPES.iter().fold(RequestBodyBuilder::new(), |body, media| body.content(*media, binary()));
    body.content("multipart/form-data", Content::new(Some(Ref::from_schema_name("ImageParts"))))
        .content("application/json", Content::new(Some(Ref::from_schema_name("JsonImages"))))
        .description(Some(
            "One image as the body (`application/octet-stream` is sniffed), or up to \
             --max-images-per-request (64) images as form parts or JSON",
        ))
        .required(Some(Required::True))
        .build()
}

fn key_requirement() -> SecurityRequirement {
    SecurityRequirement::new("api_key", Vec::<String>::new())
}

/// Adds a problem answer (under `/v2`, the protocol's `{"error": …}`; see
/// `super::v2::protocol_errors`), or joins `what` to the description of the one already there.
fn add_problem(operation: &mut Operation, status: &str, what: &str) {
    let v2 = operation.tags.as_ref().is_some_and(|tags| tags.iter().any(|t| t == "v2"));
    let (media, schema) = if v2 { ("application/json", "ErrorResponse") } else { (PROBLEM_JSON, "Problem") };
    match operation.responses.responses.get_mut(status) {
        Some(RefOr::T(response)) => {
            if !response.description.contains(what) {
                response.description = format!("{}; {what}", response.description);
            }
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            let response = ResponseBuilder::new()
                .description(what)
                .content(media, Content::new(Some(Ref::from_schema_name(schema))))
                .build();
            operation.responses.responses.insert(status.to_owned(), RefOr::T(response));
        }
    }
}

/// Handlers declare problem answers with `body = Problem`, which utoipa files under
/// `application/json`; the answer's real media type is `application/problem+json`.
fn mark_problem_bodies(operation: &mut Operation) {
    for response in operation.responses.responses.values_mut() {
        let RefOr::T(response) = response else { continue };
        let is_problem = response.content.get("application/json").is_some_and(|content| {
            matches!(content, RefOr::T(Content { schema: Some(RefOr::Ref(r)), .. }) if r.ref_location.ends_with("/Problem"))
        });
        if is_problem && let Some(content) = response.content.shift_remove("application/json") {
            response.content.insert(PROBLEM_JSON.to_owned(), content);
        }
    }
}

/// The whole description, as served and committed.
pub fn spec() -> Spec {
    finish(super::routes(&crate::config::Limits::default(), &crate::config::DatasetSettings::default()).into_openapi())
}

/// The description as committed in `docs/openapi.json`: pretty JSON with a final newline.
pub fn spec_json() -> String {
    let mut text = spec().to_pretty_json().expect("the OpenAPI description serialises");
    text.push('\n');
    text
}
