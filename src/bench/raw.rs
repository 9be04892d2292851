//! Raw ONNX Runtime throughput from Rust: the same session options as graft, input
//! already preprocessed, no HTTP, no queue — the ceiling graft's serving is measured against.

use std::time::{Duration, Instant};

use ort::value::Tensor;

use super::BenchSettings;
use crate::runtime::{ModelSource, SessionOptions, find_library, init_runtime, open_session, resolve_device};
use crate::vision::Layout;
use crate::zoo::Manifest;

/// Images per second at each batch size (each measured for about two seconds).
pub fn measure(settings: &BenchSettings, manifest: &Manifest) -> anyhow::Result<Vec<(usize, f64)>> {
    let library = find_library(settings.runtime.ort_library.as_deref())?;
    let env = init_runtime(&library)?;
    let device = resolve_device(&env, settings.runtime.device)?;
    let options = SessionOptions { device, intra_threads: settings.threads, spin: settings.runtime.ort_spin };
    let mut session = open_session(&env, ModelSource::File(&manifest.file), &options)?;
    let pre = &manifest.preprocessing;
    let (h, w) = (pre.height as usize, pre.width as usize);
    let dims = match pre.layout {
        Layout::Nchw => [3, h, w],
        Layout::Nhwc => [h, w, 3],
    };
    let mut rates = Vec::new();
    for &batch in &settings.batch_sizes {
        let run = |session: &mut crate::runtime::ModelSession| -> anyhow::Result<()> {
            let input = Tensor::from_array(([batch, dims[0], dims[1], dims[2]], vec![0.5f32; batch * h * w * 3]))?;
            let outputs = session.session.run(ort::inputs![manifest.input_name.as_str() => input])?;
            let (_, values) = outputs[manifest.output_name.as_str()].try_extract_tensor::<f32>()?;
            std::hint::black_box(values);
            Ok(())
        };
        for _ in 0..3 {
            run(&mut session)?;
        }
        let started = Instant::now();
        let mut runs = 0usize;
        while started.elapsed() < Duration::from_secs(2) || runs < 3 {
            run(&mut session)?;
            runs += 1;
        }
        rates.push((batch, (runs * batch) as f64 / started.elapsed().as_secs_f64()));
    }
    Ok(rates)
}
