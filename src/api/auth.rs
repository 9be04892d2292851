//! API keys: which requests need a bearer key, and the middleware that checks it.
//! Keys are held only as SHA-256 digests and compared in constant time.

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::rate_limit::VerifiedKey;
use crate::config::AuthSettings;
use crate::error::Error;

/// The configured keys (as digests). The default has none: everything is open.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
    private_inference: bool,
}

impl ApiKeys {
    pub fn new(keys: impl IntoIterator<Item = String>, private_inference: bool) -> Self {
        let digests = keys.into_iter().filter(|k| !k.is_empty()).map(|k| digest(&k)).collect();
        Self { digests, private_inference }
    }

    /// Keys from `--api-key` and `--api-key-file`; an unreadable file is an error naming it.
    pub fn from_settings(settings: &AuthSettings) -> anyhow::Result<Self> {
        let mut keys: Vec<String> = settings.api_keys.iter().map(|k| k.trim().to_owned()).collect();
        if let Some(path) = &settings.api_key_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read the API key file {}: {e}", path.display()))?;
            keys.extend(parse_key_file(&text));
        }
        Ok(Self::new(keys, settings.private_inference))
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` is one of the keys, without an early exit on the first byte that differs.
    fn accepts(&self, presented: &str) -> bool {
        let d = digest(presented);
        self.digests.iter().fold(subtle::Choice::from(0), |acc, k| acc | k.ct_eq(&d)).into()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// One key per line; blank lines and `#` comments are ignored.
pub fn parse_key_file(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect()
}

/// Whether `method path` needs a key. Health checks and metrics never do; inference only when
/// private. The v2 protocol's model routes (metadata, readiness, inference) are inference, so
/// that a client of the protocol needs a key for all of them or for none.
pub fn needs_key(method: &Method, path: &str, private_inference: bool) -> bool {
    let _ = method; // every method on a protected path is protected
    if path.starts_with("/v1/datasets") || path.starts_with("/v1/jobs") {
        return true;
    }
    if path.starts_with("/v2/models/") {
        return private_inference;
    }
    // The gRPC service: its model methods as the REST model routes, its server methods open.
    if let Some(method) = path.strip_prefix(super::v2::grpc::SERVICE_PATH) {
        return method.starts_with("Model") && private_inference;
    }
    if let Some(rest) = path.strip_prefix("/v1/models") {
        let inference = rest.ends_with("/classify") || rest.ends_with("/localize");
        return !inference || private_inference;
    }
    false
}

pub async fn require_key(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let keys = &state.auth;
    if keys.is_empty() || !needs_key(request.method(), request.uri().path(), keys.private_inference) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme name is case-insensitive (RFC 9110 §11.1).
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    match presented {
        Some(key) if keys.accepts(key) => {
            // The rate limit counts this request against its key.
            let verified = VerifiedKey(digest(key));
            request.extensions_mut().insert(verified);
            next.run(request).await
        }
        Some(_) => Error::Unauthorized("the API key is not valid".into()).into_response(),
        None => Error::Unauthorized("this endpoint needs an API key: send Authorization: Bearer <key>".into())
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_requests_need_a_key() {
        let cases = [
            (Method::GET, "/v1/datasets", false, true),
            (Method::POST, "/v1/datasets", false, true),
            (Method::DELETE, "/v1/datasets/abc", false, true),
            (Method::POST, "/v1/jobs", false, true),
            (Method::GET, "/v1/jobs/abc/events", false, true),
            (Method::POST, "/v1/jobs/abc/cancel", false, true),
            (Method::GET, "/v1/models", false, true),
            (Method::GET, "/v1/models/m", false, true),
            (Method::DELETE, "/v1/models/m", false, true),
            (Method::GET, "/v1/models/m/onnx", false, true),
            (Method::POST, "/v1/models/m/load", false, true),
            (Method::POST, "/v1/models/m/unload", false, true),
            (Method::POST, "/v1/models/m/classify", false, false),
            (Method::PUT, "/v1/models/m/localize", false, false),
            (Method::POST, "/v1/models/m/classify", true, true),
            (Method::POST, "/v1/models/m/localize", true, true),
            (Method::GET, "/healthz", true, false),
            (Method::GET, "/readyz", true, false),
            (Method::GET, "/metrics", true, false),
            (Method::POST, "/v2/models/m/infer", false, false),
            (Method::POST, "/inference.GRPCInferenceService/ModelInfer", false, false),
            (Method::POST, "/inference.GRPCInferenceService/ModelInfer", true, true),
            (Method::POST, "/inference.GRPCInferenceService/ModelMetadata", true, true),
            (Method::POST, "/inference.GRPCInferenceService/ServerLive", true, false),
            (Method::POST, "/inference.GRPCInferenceService/ServerMetadata", true, false),
            (Method::POST, "/v2/models/m/versions/1/infer", true, true),
            (Method::GET, "/v2/models/m", true, true),
            (Method::GET, "/v2/models/m/ready", false, false),
            (Method::GET, "/v2/health/ready", true, false),
            (Method::GET, "/v2", true, false),
        ];
        for (method, path, private, want) in cases {
            assert_eq!(needs_key(&method, path, private), want, "{method} {path} private={private}");
        }
    }

    #[test]
    fn key_file_skips_blanks_and_comments() {
        let text = "# ops team\nalpha\n\n  beta  \n#gamma\n";
        assert_eq!(parse_key_file(text), vec!["alpha".to_owned(), "beta".to_owned()]);
    }

    #[test]
    fn only_configured_keys_are_accepted() {
        let keys = ApiKeys::new(["alpha".to_owned(), "beta".to_owned()], false);
        assert!(keys.accepts("alpha") && keys.accepts("beta"));
        assert!(!keys.accepts("alph") && !keys.accepts("") && !keys.accepts("alphaa"));
        assert!(ApiKeys::default().is_empty());
    }

    #[test]
    fn unreadable_key_file_names_the_path() {
        let settings = AuthSettings { api_key_file: Some("/nonexistent/keys.txt".into()), ..Default::default() };
        let err = ApiKeys::from_settings(&settings).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/keys.txt"), "{err}");
    }
}
