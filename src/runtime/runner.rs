//! One model, one bounded queue, one OS thread per model instance: each thread owns an
//! executor (an ONNX Runtime session, whose `run` needs `&mut`). When an instance is
//! free it takes whatever requests wait — in arrival order, up to `max_batch_size`
//! images, optionally waiting `max_delay` for more — runs them as one batch and
//! answers each request through its own oneshot channel. Several instances run
//! batches side by side, which on a CPU keeps the cores busier than one session's
//! threads synchronising inside each operator; a batch that finds every other instance
//! idle and nothing else waiting may instead run on a session with all the cores
//! (`whole`), so that a lone request is as fast as with one instance. Requests whose client has gone away
//! are dropped before they are computed; a full queue is refused at once (the API
//! answers 429). Inference never runs on the async runtime's threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions};
use ort::value::Tensor;
use tokio::sync::oneshot;

use super::{Device, ModelSession, cores};

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub input_name: String,
    /// Outputs returned for every image, in this order (e.g. the scores, then the pooled features).
    pub output_names: Vec<String>,
    /// The dimensions of one image after the batch dimension, in the model's layout.
    pub image_dims: [usize; 3],
    pub max_batch_size: usize,
    /// How long a batch that is not full waits for more requests (zero: never).
    pub max_delay: Duration,
    /// Requests that may wait; one more is refused as overload.
    pub queue_capacity: usize,
}

/// How a model's requests are batched and run: the knobs a deployment tunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    pub max_batch_size: usize,
    pub max_delay: Duration,
    pub queue_capacity: usize,
    /// Sessions of the model that run batches side by side; 0 chooses for the device.
    pub instances: usize,
}

impl Batching {
    /// The instances to start on `device`: as configured, or by default two on a CPU
    /// with two or more cores (one runs while the other gathers its next batch, and
    /// neither waits on the other's threads), one on a GPU.
    pub fn instances_on(&self, device: Device) -> usize {
        match (self.instances, device) {
            (0, Device::Cpu) if cores() >= 2 => 2,
            (0, _) => 1,
            (n, _) => n,
        }
    }
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

/// Per image: one vector per output asked for, in `output_names` order.
pub type ImageOutputs = Vec<Vec<f32>>;

/// One entry per image, or why the batch failed.
type Reply = Result<Vec<ImageOutputs>, InferenceError>;

/// Runs one batch: `count` images back to back in `pixels`, returning the first `outputs`
/// of the configured outputs (at least those; an executor may return all of them).
pub trait BatchExecutor: Send + 'static {
    fn run(&mut self, pixels: Vec<f32>, count: usize, outputs: usize) -> Reply;
}

struct Request {
    /// When it was queued (its wait is a metric).
    queued: Instant,
    /// `count` images, each `image_len` values, back to back.
    pixels: Vec<f32>,
    count: usize,
    /// How many of the configured outputs the caller reads (the first ones).
    outputs: usize,
    reply: oneshot::Sender<Reply>,
}

#[derive(Clone)]
pub struct ModelRunner {
    /// The model's name: the `model` label of the runner's metrics.
    name: Arc<str>,
    sender: SyncSender<Request>,
    config: RunnerConfig,
    /// Requests sent and not yet taken into a batch (shared with the instance threads).
    waiting: Arc<AtomicUsize>,
    instances: usize,
}

/// A request handed to the runner, whose outputs a caller outside the async runtime collects
/// later: it can prepare or hand over more work while this one runs.
pub struct PendingInference(oneshot::Receiver<Reply>);

impl PendingInference {
    /// Blocks until the request's outputs are ready.
    pub fn wait(self) -> Result<Vec<ImageOutputs>, InferenceError> {
        self.0.blocking_recv().map_err(|_| InferenceError::Stopped)?
    }
}

impl ModelRunner {
    /// Starts one thread per instance executor; they take batches from one shared queue.
    /// `whole`, if given, runs the batches that find every other instance idle.
    pub fn spawn<E: BatchExecutor>(
        name: &str,
        instances: Vec<E>,
        whole: Option<E>,
        config: RunnerConfig,
    ) -> std::io::Result<Self> {
        assert!(!instances.is_empty(), "a runner needs at least one executor");
        let (sender, receiver) = sync_channel(config.queue_capacity.max(1));
        let waiting = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            intake: Mutex::new(Intake { receiver, carried: None }),
            waiting: waiting.clone(),
            busy: AtomicUsize::new(0),
            whole: whole.map(Mutex::new),
        });
        let count = instances.len();
        let name: Arc<str> = Arc::from(name);
        for (instance, executor) in instances.into_iter().enumerate() {
            let (shared, config, model) = (shared.clone(), config.clone(), name.clone());
            thread::Builder::new()
                .name(format!("ort-{name}-{instance}"))
                .spawn(move || run_loop(executor, &shared, &config, &model))?;
        }
        Ok(Self { name, sender, config, waiting, instances: count })
    }

    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    /// Batches that can run side by side: one per instance.
    pub fn instances(&self) -> usize {
        self.instances
    }

    pub fn image_len(&self) -> usize {
        self.config.image_dims.iter().product()
    }

    /// Runs `count` preprocessed images (at most `max_batch_size`) and returns each image's
    /// first `outputs` outputs (or more, when a request sharing the batch asked for more).
    /// Outputs not asked for are not copied out of ONNX Runtime: a spatial map is 100 times
    /// the size of the scores.
    pub async fn infer(
        &self,
        pixels: Vec<f32>,
        count: usize,
        outputs: usize,
    ) -> Result<Vec<ImageOutputs>, InferenceError> {
        let reply = self.submit(pixels, count, outputs)?;
        reply.await.map_err(|_| InferenceError::Stopped)?
    }

    /// Zeroed buffers for `count` images, in parts of at most `max_batch_size` images, for the
    /// caller to fill and pass to [`infer_parts`](Self::infer_parts) as they are.
    pub fn part_buffers(&self, count: usize) -> Vec<Vec<f32>> {
        let (most, image_len) = (self.config.max_batch_size, self.image_len());
        (0..count).step_by(most.max(1)).map(|start| vec![0.0; (count - start).min(most) * image_len]).collect()
    }

    /// Runs any number of images, given as parts of at most `max_batch_size` images (see
    /// [`part_buffers`](Self::part_buffers)): each part is one request, which may share a
    /// batch with other requests, and its buffer goes to the runner without a copy.
    /// Outputs come back in input order.
    pub async fn infer_parts(&self, parts: Vec<Vec<f32>>, outputs: usize) -> Result<Vec<ImageOutputs>, InferenceError> {
        let image_len = self.image_len().max(1);
        let requests: Vec<_> = parts
            .into_iter()
            .map(|part| {
                let count = part.len() / image_len;
                self.infer(part, count, outputs)
            })
            .collect();
        Ok(try_join_all(requests).await?.into_iter().flatten().collect())
    }

    /// As [`infer`](Self::infer), for callers outside the async runtime.
    pub fn infer_blocking(
        &self,
        pixels: Vec<f32>,
        count: usize,
        outputs: usize,
    ) -> Result<Vec<ImageOutputs>, InferenceError> {
        self.start_blocking(pixels, count, outputs)?.wait()
    }

    /// Queues `count` images (at most `max_batch_size`) and returns at once; the outputs are
    /// collected with [`PendingInference::wait`]. A caller that keeps one request per
    /// instance in flight keeps every instance busy.
    pub fn start_blocking(
        &self,
        pixels: Vec<f32>,
        count: usize,
        outputs: usize,
    ) -> Result<PendingInference, InferenceError> {
        self.submit(pixels, count, outputs).map(PendingInference)
    }

    fn submit(
        &self,
        pixels: Vec<f32>,
        count: usize,
        outputs: usize,
    ) -> Result<oneshot::Receiver<Reply>, InferenceError> {
        assert!(count >= 1 && count <= self.config.max_batch_size, "callers split requests into batches");
        assert_eq!(pixels.len(), count * self.image_len(), "pixels must hold `count` whole images");
        assert!((1..=self.config.output_names.len()).contains(&outputs), "callers ask for configured outputs");
        let (reply, receiver) = oneshot::channel();
        // Counted before it can be taken, so the count never goes below zero.
        let waiting = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
        metrics::gauge!("graft_queue_depth", "model" => self.name.to_string()).set(waiting as f64);
        let request = Request { queued: Instant::now(), pixels, count, outputs, reply };
        self.sender.try_send(request).map_err(|err| {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            match err {
                TrySendError::Full(_) => {
                    metrics::counter!("graft_queue_full_total", "model" => self.name.to_string()).increment(1);
                    InferenceError::Overloaded
                }
                TrySendError::Disconnected(_) => InferenceError::Stopped,
            }
        })?;
        Ok(receiver)
    }
}

/// What a model's instance threads share.
struct Shared<E> {
    intake: Mutex<Intake>,
    /// Requests sent and not yet taken into a batch; the runner handles count them in.
    waiting: Arc<AtomicUsize>,
    /// Instances running a batch now.
    busy: AtomicUsize,
    /// The session with all the cores, for a batch that runs alone.
    whole: Option<Mutex<E>>,
}

impl<E: BatchExecutor> Shared<E> {
    /// Runs the batch on the whole-machine session when it is the only work (no other
    /// instance busy, no other request waiting) and that session is free, else on the
    /// instance's own. A request already waiting will start on another instance while this
    /// batch runs, and two batches on all the cores plus one more would oversubscribe them.
    fn run(&self, own: &mut E, pixels: Vec<f32>, count: usize, outputs: usize) -> Reply {
        let others_busy = self.busy.fetch_add(1, Ordering::SeqCst);
        let alone = others_busy == 0 && self.waiting.load(Ordering::SeqCst) == 0;
        let whole = match (alone, &self.whole) {
            (true, Some(whole)) => whole.try_lock().ok(),
            _ => None,
        };
        let reply = match whole {
            Some(mut whole) => whole.run(pixels, count, outputs),
            None => own.run(pixels, count, outputs),
        };
        self.busy.fetch_sub(1, Ordering::SeqCst);
        reply
    }
}

/// The queue's receiving end, shared by the instances: one of them at a time forms a batch.
struct Intake {
    receiver: Receiver<Request>,
    /// A request that did not fit the last batch; it opens the next one.
    carried: Option<Request>,
}

impl Intake {
    /// Waits for the next batch: the first waiting request, then what else waits (up to
    /// `max_delay` for more) as long as it fits. `None` once every sender is gone and
    /// the queue is drained.
    fn next_batch(&mut self, config: &RunnerConfig) -> Option<Vec<Request>> {
        let first = self.carried.take().or_else(|| self.receiver.recv().ok())?;
        let mut batch = vec![first];
        let mut images = batch[0].count;
        let deadline = Instant::now() + config.max_delay;
        while images < config.max_batch_size {
            let next = match self.receiver.try_recv() {
                Ok(next) => next,
                Err(_) if config.max_delay.is_zero() => break,
                Err(_) => match self.receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(next) => next,
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                },
            };
            if images + next.count > config.max_batch_size {
                // Keep arrival order: the request that does not fit opens the next batch.
                self.carried = Some(next);
                break;
            }
            images += next.count;
            batch.push(next);
        }
        Some(batch)
    }
}

fn run_loop<E: BatchExecutor>(mut executor: E, shared: &Shared<E>, config: &RunnerConfig, model: &str) {
    let model = model.to_owned();
    let queue_wait = metrics::histogram!("graft_inference_stage_seconds", "model" => model.clone(), "stage" => "queue");
    let inference =
        metrics::histogram!("graft_inference_stage_seconds", "model" => model.clone(), "stage" => "inference");
    let batch_size = metrics::histogram!("graft_batch_size", "model" => model.clone());
    let depth = metrics::gauge!("graft_queue_depth", "model" => model);
    loop {
        // The lock is held while the batch forms, so the instances take turns at the queue
        // and never split what waits between them. A panic elsewhere leaves the intake intact.
        let next = {
            let mut intake = shared.intake.lock().unwrap_or_else(PoisonError::into_inner);
            let next = intake.next_batch(config);
            // Counted out while the lock is held: the next instance to form a batch sees
            // exactly what still waits (a carried request still does).
            if let Some(batch) = &next {
                let left = shared.waiting.fetch_sub(batch.len(), Ordering::SeqCst) - batch.len();
                depth.set(left as f64);
            }
            next
        };
        // Every sender gone (the model was unloaded) and the queue drained: the thread ends.
        let Some(mut batch) = next else { return };
        batch.retain(|request| !request.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let count: usize = batch.iter().map(|r| r.count).sum();
        let started = Instant::now();
        for request in &batch {
            queue_wait.record(started.duration_since(request.queued).as_secs_f64());
        }
        batch_size.record(count as f64);
        // The first request's buffer becomes the batch's: a batch of one is never copied.
        let total: usize = batch.iter().map(|r| r.pixels.len()).sum();
        let mut pixels = std::mem::take(&mut batch[0].pixels);
        pixels.reserve_exact(total - pixels.len());
        for request in &mut batch[1..] {
            pixels.append(&mut request.pixels);
        }
        let outputs = batch.iter().map(|r| r.outputs).max().unwrap_or(1);
        let result = shared.run(&mut executor, pixels, count, outputs);
        inference.record(started.elapsed().as_secs_f64());
        match result {
            Ok(mut rows) if rows.len() == count => {
                for request in batch.into_iter().rev() {
                    let mine = rows.split_off(rows.len() - request.count);
                    let _ = request.reply.send(Ok(mine));
                }
            }
            Ok(rows) => {
                let err = InferenceError::Runtime(format!("{} outputs for {count} images", rows.len()));
                batch.into_iter().for_each(|r| drop(r.reply.send(Err(err.clone()))));
            }
            Err(err) => batch.into_iter().for_each(|r| drop(r.reply.send(Err(err.clone())))),
        }
    }
}

/// The ONNX Runtime session of a model, as a batch executor.
pub struct OrtExecutor {
    session: ModelSession,
    input_name: String,
    output_names: Vec<String>,
    image_dims: [usize; 3],
    /// The shape of each output (in `output_names` order) in the last batch run: what a
    /// graph output added without a declared shape turns out to be.
    last_shapes: Vec<Vec<usize>>,
    /// Run options selecting the first `k + 1` outputs, made when first needed (`k + 1`
    /// below all of them; all of them run without options).
    selections: Vec<Option<RunOptions<HasSelectedOutputs>>>,
}

impl OrtExecutor {
    pub fn new(session: ModelSession, config: &RunnerConfig) -> Self {
        Self {
            session,
            input_name: config.input_name.clone(),
            output_names: config.output_names.clone(),
            image_dims: config.image_dims,
            last_shapes: Vec::new(),
            selections: Vec::new(),
        }
    }

    /// Makes (once) the options that have ONNX Runtime return only the first `outputs` outputs.
    fn prepare_selection(&mut self, outputs: usize) -> ort::Result<()> {
        if self.selections.len() < outputs {
            self.selections.resize_with(outputs, || None);
        }
        let slot = &mut self.selections[outputs - 1];
        if slot.is_none() {
            let selector = self.output_names[..outputs]
                .iter()
                .fold(OutputSelector::no_default(), |selector, name| selector.with(name.as_str()));
            *slot = Some(RunOptions::new()?.with_outputs(selector));
        }
        Ok(())
    }

    /// Each output's shape in the last batch run, batch dimension first.
    pub fn last_shapes(&self) -> &[Vec<usize>] {
        &self.last_shapes
    }
}

impl BatchExecutor for OrtExecutor {
    fn run(&mut self, pixels: Vec<f32>, count: usize, wanted: usize) -> Reply {
        let runtime = |e: ort::Error| InferenceError::Runtime(e.to_string());
        let [a, b, c] = self.image_dims;
        let wanted = wanted.clamp(1, self.output_names.len());
        let every = wanted == self.output_names.len();
        if !every {
            self.prepare_selection(wanted).map_err(runtime)?;
        }
        let input = Tensor::from_array(([count, a, b, c], pixels)).map_err(runtime)?;
        let inputs = ort::inputs![self.input_name.as_str() => input];
        let outputs = match self.selections.get(wanted - 1).and_then(Option::as_ref) {
            Some(options) if !every => self.session.session.run_with_options(inputs, options),
            _ => self.session.session.run(inputs),
        }
        .map_err(runtime)?;
        let mut per_image: Vec<ImageOutputs> = vec![Vec::with_capacity(wanted); count];
        self.last_shapes.clear();
        for name in &self.output_names[..wanted] {
            let output = outputs
                .get(name)
                .ok_or_else(|| InferenceError::Runtime(format!("the model produced no output named {name}")))?;
            let (shape, values) = output.try_extract_tensor::<f32>().map_err(runtime)?;
            self.last_shapes.push(shape.iter().map(|&d| d.max(0) as usize).collect());
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
}

#[cfg(test)]
mod tests;
