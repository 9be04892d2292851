//! `graft bench-tune`: the time of phase 2 (tuning the top of a base) per step and per
//! epoch on cached activations, against ONNX Runtime's forward pass of the same tail in the
//! same run, and the memory the activation cache takes per image.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use graft::config::RuntimeSettings;
use graft::finetune::{TailModel, TuneData, TuneHead, TuneSplit, tune};
use graft::onnx::BaseGraph;
use graft::runtime::{ModelSource, open_session};
use graft::train::{Head, TrainConfig};

#[derive(Debug, Clone, Args)]
pub struct TuneBenchSettings {
    /// An ONNX graph whose tail to time (e.g. from scripts/make_resnet50_stage5.py).
    #[arg(long)]
    pub model: PathBuf,
    /// The cut tensor (the tail's input; a graph input is fine).
    #[arg(long, default_value = "conv4_block6_out")]
    pub cut: String,
    /// The pooled-feature tensor the tail ends in.
    #[arg(long, default_value = "avg_pool")]
    pub features: String,
    /// The shape of one image's activations at the cut, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1024,14,14")]
    pub shape: Vec<usize>,
    /// Images in the timed epoch.
    #[arg(long, default_value_t = 32)]
    pub images: usize,
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Classes of the head on top.
    #[arg(long, default_value_t = 5)]
    pub classes: usize,
    /// Train-split sizes to extrapolate the epoch time to, comma-separated (flowers: 2936).
    #[arg(long, value_delimiter = ',', default_value = "1000,2936")]
    pub extrapolate: Vec<usize>,
    #[command(flatten)]
    pub runtime: RuntimeSettings,
}

pub async fn run(settings: TuneBenchSettings) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || measure(&settings)).await?
}

fn measure(settings: &TuneBenchSettings) -> anyhow::Result<()> {
    let bytes = fs_err::read(&settings.model)?;
    let base = BaseGraph::decode(&bytes)?;
    let tail = base.tail(&settings.cut, &settings.features)?;
    let model = TailModel::new(&tail).map_err(anyhow::Error::msg)?;
    let per_image: usize = settings.shape.iter().product();
    let parameters: usize = model.params().iter().map(|p| p.shape.iter().product::<usize>()).sum();
    println!(
        "tail {} → {} of {}: {} nodes, {} trainable tensors, {parameters} parameters; activations {:?} = {} bytes per image",
        settings.cut,
        settings.features,
        settings.model.display(),
        tail.nodes.len(),
        model.params().len(),
        settings.shape,
        per_image * 4
    );

    let mut rng = StdRng::seed_from_u64(0);
    let activations: Vec<f32> = (0..per_image * settings.images).map(|_| rng.random_range(0.0..1.0)).collect();
    let labels: Vec<usize> = (0..settings.images).map(|i| i % settings.classes).collect();
    let batch_shape = |n: usize| [&[n][..], &settings.shape].concat();

    // The same-run baseline: ONNX Runtime's forward pass of the tail alone.
    let ort_seconds = ort_forward_seconds(settings, &bytes, &activations[..per_image * settings.batch_size])?;

    let forward_started = Instant::now();
    let x = Tensor::from_slice(
        &activations[..per_image * settings.batch_size],
        batch_shape(settings.batch_size),
        &Device::Cpu,
    )?;
    let width = model.forward(&x)?.dim(1)?;
    let graft_forward = forward_started.elapsed().as_secs_f64();
    let head = Head::init(width, None, settings.classes, &mut rng).map_err(anyhow::Error::msg)?;
    let data = TuneData {
        shape: settings.shape.clone(),
        classes: settings.classes,
        train: vec![TuneSplit { activations, labels, boxes: Vec::new() }],
        valid: None,
    };
    let config =
        TrainConfig { epochs: 1, batch_size: settings.batch_size, early_stopping: None, ..TrainConfig::default() };
    let started = Instant::now();
    tune(&config, &model, &TuneHead::Classifier(head), &data, None, &mut |_, _| std::ops::ControlFlow::Continue(()))?;
    let epoch = started.elapsed().as_secs_f64();
    let steps = settings.images.div_ceil(settings.batch_size);
    let per_step = epoch / steps as f64;
    let per_image_seconds = epoch / settings.images as f64;
    println!(
        "batch {}: ONNX Runtime forward {:.3} s; graft forward {:.3} s; graft training step (forward + backward + update) {:.3} s",
        settings.batch_size, ort_seconds, graft_forward, per_step
    );
    println!("ratio: training step / ONNX Runtime forward = {:.1}", per_step / ort_seconds);
    println!("epoch of {} images: {epoch:.1} s ({:.3} s per image)", settings.images, per_image_seconds);
    for &n in &settings.extrapolate {
        println!(
            "  extrapolated to {n} images: {:.1} min per epoch; activation cache {:.2} GB",
            per_image_seconds * n as f64 / 60.0,
            (n * per_image * 4) as f64 / 1e9
        );
    }
    Ok(())
}

/// Median seconds of ONNX Runtime's forward pass of the graph on one batch (5 runs after a warm-up).
fn ort_forward_seconds(settings: &TuneBenchSettings, bytes: &[u8], batch: &[f32]) -> anyhow::Result<f64> {
    let env = graft::runtime::init_runtime(&graft::runtime::find_library(settings.runtime.ort_library.as_deref())?)?;
    let options = settings.runtime.session_options();
    let graph = graft::onnx::expose_outputs(bytes, &[&settings.features])?;
    let mut session =
        open_session(&env, ModelSource::Edited { path: Path::new(&settings.model), bytes: &graph }, &options)
            .context("opening the tail in ONNX Runtime")?;
    let shape = [&[settings.batch_size][..], &settings.shape].concat();
    let mut times = Vec::new();
    for _ in 0..6 {
        let input = ort::value::Tensor::from_array((shape.clone(), batch.to_vec()))?;
        let started = Instant::now();
        session.session.run(ort::inputs![settings.cut.as_str() => input])?;
        times.push(started.elapsed().as_secs_f64());
    }
    times.remove(0);
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
