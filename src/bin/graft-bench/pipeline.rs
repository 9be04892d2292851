//! The in-process ceiling of serving: decode, preprocess and ONNX Runtime in one process on
//! the same threads, with graft's own overlap (decoding on the blocking pool while the
//! batcher runs the model on its sessions) and no HTTP. graft over HTTP ÷ this is what the
//! server itself costs.

use std::sync::Arc;

use bytes::Bytes;

use crate::load::{Call, LoadResult, run_closed_loop};
use graft::runtime::SessionOptions;
use graft::serving::{LoadedModel, ModelRuntime, load_model};
use graft::vision::{DecodeLimits, image_tensor};
use graft::zoo::Manifest;

/// Images a second when `concurrency` callers each decode, preprocess and run one image at a
/// time through graft's runner, with graft's session layout and batching.
pub async fn measure(
    env: &ort::environment::Environment,
    manifest: &Manifest,
    options: SessionOptions,
    batching: graft::runtime::Batching,
    image: &[u8],
    (concurrency, requests): (usize, usize),
) -> anyhow::Result<LoadResult> {
    let runtime = ModelRuntime { env: env.clone(), options, batching, share_weights: true };
    let manifest = Arc::new(manifest.clone());
    let model = tokio::task::spawn_blocking(move || load_model(&runtime, manifest))
        .await?
        .map_err(|e| anyhow::anyhow!("loading the model in process: {e}"))?;
    let model = Arc::new(model);
    let image = Bytes::copy_from_slice(image);
    let send = move || -> Call {
        let (model, image) = (model.clone(), image.clone());
        Box::pin(async move { classify(model, image).await.is_some() })
    };
    run_closed_loop(concurrency, 4 * concurrency, None, send.clone()).await?;
    run_closed_loop(concurrency, requests, None, send).await
}

async fn classify(model: Arc<LoadedModel>, image: Bytes) -> Option<()> {
    let spec = model.manifest.preprocessing.clone();
    let pixels = tokio::task::spawn_blocking(move || image_tensor(&image, &DecodeLimits::default(), &spec).ok())
        .await
        .ok()??;
    let outputs = model.runner.infer_parts(vec![pixels], 1).await.ok()?;
    std::hint::black_box(outputs);
    Some(())
}
