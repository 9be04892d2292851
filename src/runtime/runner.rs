//! One model, one OS thread: the thread owns the ONNX Runtime session (its `run`
//! needs `&mut`) and is fed through a bounded channel. When it is free it takes
//! whatever requests wait, up to `max_batch_size` images, runs them as one batch
//! and answers each request through its own oneshot channel. Requests whose
//! client has gone away are dropped before they are computed.

use std::thread;

use ort::value::Tensor;
use tokio::sync::{mpsc, oneshot};

use super::ModelSession;

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub input_name: String,
    /// Outputs returned for every image, in this order (e.g. the scores, then the pooled features).
    pub output_names: Vec<String>,
    /// The dimensions of one image after the batch dimension, in the model's layout.
    pub image_dims: [usize; 3],
    pub max_batch_size: usize,
    /// Requests that may wait; one more is refused as overload.
    pub queue_capacity: usize,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum InferenceError {
    #[error("the model's queue is full; try again shortly")]
    Overloaded,
    #[error("the model is shutting down")]
    Stopped,
    #[error("ONNX Runtime failed: {0}")]
    Runtime(String),
}

/// Per image: one vector per configured output, in `output_names` order.
pub type ImageOutputs = Vec<Vec<f32>>;

/// One entry per image, or why the batch failed.
type Reply = Result<Vec<ImageOutputs>, InferenceError>;

struct Request {
    /// `count` images, each `image_len` values, back to back.
    pixels: Vec<f32>,
    count: usize,
    reply: oneshot::Sender<Reply>,
}

#[derive(Clone)]
pub struct ModelRunner {
    sender: mpsc::Sender<Request>,
    config: RunnerConfig,
}

impl ModelRunner {
    pub fn spawn(name: &str, session: ModelSession, config: RunnerConfig) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let thread_config = config.clone();
        thread::Builder::new().name(format!("ort-{name}")).spawn(move || run_loop(session, receiver, thread_config))?;
        Ok(Self { sender, config })
    }

    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    pub fn image_len(&self) -> usize {
        self.config.image_dims.iter().product()
    }

    /// Runs `count` preprocessed images (at most `max_batch_size`) and returns each image's outputs.
    pub async fn infer(&self, pixels: Vec<f32>, count: usize) -> Result<Vec<ImageOutputs>, InferenceError> {
        let reply = self.submit(pixels, count)?;
        reply.await.map_err(|_| InferenceError::Stopped)?
    }

    /// As [`infer`](Self::infer), for callers outside the async runtime.
    pub fn infer_blocking(&self, pixels: Vec<f32>, count: usize) -> Result<Vec<ImageOutputs>, InferenceError> {
        let reply = self.submit(pixels, count)?;
        reply.blocking_recv().map_err(|_| InferenceError::Stopped)?
    }

    fn submit(&self, pixels: Vec<f32>, count: usize) -> Result<oneshot::Receiver<Reply>, InferenceError> {
        assert!(count >= 1 && count <= self.config.max_batch_size, "callers split requests into batches");
        assert_eq!(pixels.len(), count * self.image_len(), "pixels must hold `count` whole images");
        let (reply, receiver) = oneshot::channel();
        self.sender.try_send(Request { pixels, count, reply }).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => InferenceError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => InferenceError::Stopped,
        })?;
        Ok(receiver)
    }
}

fn run_loop(mut session: ModelSession, mut receiver: mpsc::Receiver<Request>, config: RunnerConfig) {
    let mut carried: Option<Request> = None;
    loop {
        let Some(first) = carried.take().or_else(|| receiver.blocking_recv()) else {
            return; // every sender is gone: the model was unloaded
        };
        let mut batch = vec![first];
        let mut images = batch[0].count;
        while images < config.max_batch_size {
            match receiver.try_recv() {
                Ok(next) if images + next.count <= config.max_batch_size => {
                    images += next.count;
                    batch.push(next);
                }
                Ok(next) => {
                    carried = Some(next);
                    break;
                }
                Err(_) => break,
            }
        }
        batch.retain(|request| !request.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let outcome = run_batch(&mut session, &batch, &config);
        match outcome {
            Ok(mut rows) => {
                for request in batch {
                    let rest = rows.split_off(request.count);
                    let _ = request.reply.send(Ok(std::mem::replace(&mut rows, rest)));
                }
            }
            Err(err) => {
                for request in batch {
                    let _ = request.reply.send(Err(err.clone()));
                }
            }
        }
    }
}

fn run_batch(session: &mut ModelSession, batch: &[Request], config: &RunnerConfig) -> Reply {
    let count: usize = batch.iter().map(|r| r.count).sum();
    let mut pixels = Vec::with_capacity(count * config.image_dims.iter().product::<usize>());
    for request in batch {
        pixels.extend_from_slice(&request.pixels);
    }
    let [a, b, c] = config.image_dims;
    let input = Tensor::from_array(([count, a, b, c], pixels)).map_err(|e| InferenceError::Runtime(e.to_string()))?;
    let outputs = session
        .session
        .run(ort::inputs![config.input_name.as_str() => input])
        .map_err(|e| InferenceError::Runtime(e.to_string()))?;
    let mut per_image: Vec<ImageOutputs> = vec![Vec::with_capacity(config.output_names.len()); count];
    for name in &config.output_names {
        let output = outputs
            .get(name)
            .ok_or_else(|| InferenceError::Runtime(format!("the model produced no output named {name}")))?;
        let (_, values) = output.try_extract_tensor::<f32>().map_err(|e| InferenceError::Runtime(e.to_string()))?;
        if values.is_empty() || values.len() % count != 0 {
            return Err(InferenceError::Runtime(format!(
                "output {name} has {} values for {count} images",
                values.len()
            )));
        }
        for (image, row) in per_image.iter_mut().zip(values.chunks(values.len() / count)) {
            image.push(row.to_vec());
        }
    }
    Ok(per_image)
}
