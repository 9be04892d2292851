//! Raw ONNX Runtime throughput from Rust: the same session options as graft, input
//! already preprocessed, no HTTP, no queue — the ceiling graft's serving is measured against.

use std::time::{Duration, Instant};

use ort::environment::Environment;
use ort::value::Tensor;

use crate::serving::BenchSettings;
use graft::runtime::{Device, ModelSession, ModelSource, SessionOptions, open_session};
use graft::vision::Layout;
use graft::zoo::Manifest;

/// How the model runs: `sessions` sessions side by side, each with `threads` ONNX Runtime threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLayout {
    pub sessions: usize,
    pub threads: usize,
}

impl std::fmt::Display for SessionLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        write!(
            f,
            "{} session{} × {} thread{}",
            self.sessions,
            plural(self.sessions),
            self.threads,
            plural(self.threads)
        )
    }
}

/// Images per second at one batch size of one layout.
#[derive(Debug, Clone, Copy)]
pub struct RawRate {
    pub layout: SessionLayout,
    pub batch: usize,
    pub images_per_second: f64,
}

/// Images per second of each layout at each batch size (each measured for about two
/// seconds). Every session of a layout runs its own closed loop on its own thread.
pub fn measure(
    settings: &BenchSettings,
    manifest: &Manifest,
    env: &Environment,
    device: Device,
    layouts: &[SessionLayout],
) -> anyhow::Result<Vec<RawRate>> {
    let pre = &manifest.preprocessing;
    let (h, w) = (pre.height as usize, pre.width as usize);
    let dims = match pre.layout {
        Layout::Nchw => [3, h, w],
        Layout::Nhwc => [h, w, 3],
    };
    let mut rates = Vec::new();
    for &layout in layouts {
        let options = SessionOptions {
            device,
            intra_threads: layout.threads,
            spin: settings.runtime.ort_spin,
            arena: settings.runtime.ort_arena,
        };
        let mut sessions = (0..layout.sessions)
            .map(|_| open_session(env, ModelSource::File(&manifest.file), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for &batch in &settings.batch_sizes {
            let run = |session: &mut ModelSession| -> anyhow::Result<()> {
                let input = Tensor::from_array(([batch, dims[0], dims[1], dims[2]], vec![0.5f32; batch * h * w * 3]))?;
                let outputs = session.session.run(ort::inputs![manifest.input_name.as_str() => input])?;
                let (_, values) = outputs[manifest.output_name.as_str()].try_extract_tensor::<f32>()?;
                std::hint::black_box(values);
                Ok(())
            };
            for session in &mut sessions {
                for _ in 0..3 {
                    run(session)?;
                }
            }
            let started = Instant::now();
            let runs = std::thread::scope(|scope| {
                let loops: Vec<_> = sessions
                    .iter_mut()
                    .map(|session| {
                        scope.spawn(move || -> anyhow::Result<usize> {
                            let mut runs = 0usize;
                            while started.elapsed() < Duration::from_secs(2) || runs < 3 {
                                run(session)?;
                                runs += 1;
                            }
                            Ok(runs)
                        })
                    })
                    .collect();
                loops
                    .into_iter()
                    .map(|l| l.join().expect("a raw ONNX Runtime loop panicked"))
                    .sum::<anyhow::Result<usize>>()
            })?;
            let images_per_second = (runs * batch) as f64 / started.elapsed().as_secs_f64();
            rates.push(RawRate { layout, batch, images_per_second });
        }
    }
    Ok(rates)
}
