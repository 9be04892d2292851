//! `graft-bench serving`: serving speed measured in one run on the same model and thread
//! count — raw ONNX Runtime from Rust, graft over HTTP, a reference Python server over HTTP,
//! and preprocessing alone against Pillow + numpy — printed with the ratios the targets are
//! stated in.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::load::{LoadResult, Workload, run_load};
use crate::process::{Server, rss_kib};
use crate::raw::{RawRate, SessionLayout};
use graft::config::{Limits, RuntimeSettings};
use graft::runtime::{Batching, SessionOptions, cores, find_library, init_runtime, resolve_device};
use graft::vision::{DecodeLimits, decode_for, preprocess_into};
use graft::zoo::Manifest;

#[derive(Debug, Clone, Args)]
pub struct BenchSettings {
    #[command(flatten)]
    pub workload: Workload,
    /// Batch sizes for raw ONNX Runtime, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub batch_sizes: Vec<usize>,
    /// ONNX Runtime threads in all, for graft, raw ONNX Runtime and Python alike (graft's
    /// instances share them equally).
    #[arg(long, default_value_t = cores())]
    pub threads: usize,
    /// graft's sessions per model (`graft serve --model-instances`; 0: graft's default).
    #[arg(long, default_value_t = 0)]
    pub instances: usize,
    /// Python with the reference server's packages (bench/server-requirements.txt); empty to skip it.
    #[arg(long, default_value = ".venv-bench/bin/python")]
    pub python: String,
    /// Also hold concurrency 32 for this many seconds and report graft's memory (RSS) over time.
    #[arg(long, default_value_t = 0)]
    pub soak_seconds: u64,
    /// `int8`: also measure `<model>_int8` (made by `graft models quantize`), side by side.
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: Precision,
    #[command(flatten)]
    pub runtime: RuntimeSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    Fp32,
    Int8,
}

/// Concurrency of the in-process ceiling, the level its ratio is stated at.
const CEILING_CONCURRENCY: usize = 8;

pub async fn run(settings: BenchSettings) -> anyhow::Result<()> {
    let manifest = Manifest::load(&settings.workload.model_dir.join(format!("{}.toml", settings.workload.model)))?;
    let image = fs_err::read(&settings.workload.image)?;
    let content_type = if image.starts_with(&[0xFF, 0xD8]) { "image/jpeg" } else { "image/png" };
    println!(
        "model {}, image {} ({} bytes), {} ONNX Runtime threads, {} requests per level, {} cores",
        manifest.name,
        settings.workload.image.display(),
        image.len(),
        settings.threads,
        settings.workload.requests,
        cores()
    );

    // (a) Raw ONNX Runtime from Rust: one session with all the threads, two sessions
    // sharing them, and graft's layout; the best of them is the ceiling.
    let env = init_runtime(&find_library(settings.runtime.ort_library.as_deref())?)?;
    let device = resolve_device(&env, settings.runtime.device)?;
    let instances = Batching { instances: settings.instances, ..Limits::default().batching() }.instances_on(device);
    let options = SessionOptions {
        device,
        intra_threads: settings.threads,
        spin: settings.runtime.ort_spin,
        arena: settings.runtime.ort_arena,
    };
    let graft_layout = SessionLayout { sessions: instances, threads: options.for_instances(instances).0.intra_threads };
    let single = SessionLayout { sessions: 1, threads: settings.threads };
    // The ceiling does not depend on graft's choice: one session, two side by side, and graft's layout.
    let mut layouts = vec![single, graft_layout];
    if settings.threads >= 2 {
        layouts.push(SessionLayout { sessions: 2, threads: settings.threads / 2 });
    }
    layouts.sort_by_key(|l| (l.sessions, l.threads));
    layouts.dedup();
    let raw = crate::raw::measure(&settings, &manifest, &env, device, &layouts)?;
    print_raw("(a) raw ONNX Runtime (Rust, preprocessed input)", &raw);
    let best = |rates: &mut dyn Iterator<Item = &RawRate>| {
        rates.copied().max_by(|a, b| a.images_per_second.total_cmp(&b.images_per_second)).expect("batch sizes")
    };
    let raw_best = best(&mut raw.iter()).images_per_second;
    let best_batch = best(&mut raw.iter().filter(|r| r.layout == graft_layout)).batch;
    let alone = if graft_layout == single { String::new() } else { format!(" (a batch that runs alone: {single})") };
    println!("    graft is started with {graft_layout}{alone} and --max-batch-size {best_batch},");
    println!("    the best batch size of that layout here");

    // (e) The in-process ceiling: decode, preprocess and the model in this process, graft's layout.
    let ceiling = |manifest: Manifest| {
        let (env, options, image) = (env.clone(), options.clone(), image.clone());
        let requests = settings.workload.requests;
        async move {
            let batching = Batching {
                instances: graft_layout.sessions,
                max_batch_size: best_batch,
                ..Limits::default().batching()
            };
            crate::pipeline::measure(&env, &manifest, options, batching, &image, (CEILING_CONCURRENCY, requests)).await
        }
    };
    let fp32_ceiling = ceiling(manifest.clone()).await?;
    println!(
        "\n(e) in-process pipeline (decode + preprocess + ONNX Runtime, graft's layout, no HTTP), c={CEILING_CONCURRENCY}: {:.1} images/s",
        fp32_ceiling.images_per_second
    );
    let int8_manifest = match settings.precision {
        Precision::Fp32 => None,
        Precision::Int8 => {
            let path = settings.workload.model_dir.join(format!("{}_int8.toml", manifest.name));
            anyhow::ensure!(
                path.is_file(),
                "no {} (make it with `graft models quantize {} --calibration DIR`; make bench-int8 does)",
                path.display(),
                manifest.name
            );
            Some(Manifest::load(&path)?)
        }
    };
    let int8 = match &int8_manifest {
        None => None,
        Some(int8) => {
            let raw = crate::raw::measure(&settings, int8, &env, device, &layouts)?;
            print_raw(&format!("(a) raw ONNX Runtime, {}", int8.name), &raw);
            let ceiling = ceiling(int8.clone()).await?;
            println!(
                "(e) in-process pipeline, {}, c={CEILING_CONCURRENCY}: {:.1} images/s",
                int8.name, ceiling.images_per_second
            );
            Some((best(&mut raw.iter()).images_per_second, ceiling))
        }
    };

    // (b) graft over HTTP.
    // `graft serve` of one model with the layout and batch size chosen above.
    let graft_args = |model: &str| {
        let mut args: Vec<String> = ["serve", "--models", model, "--workers", "0"].map(String::from).to_vec();
        args.extend(["--model-instances".into(), graft_layout.sessions.to_string()]);
        args.extend(["--intra-threads".into(), settings.threads.to_string()]);
        args.extend(["--max-batch-size".into(), best_batch.to_string()]);
        if settings.runtime.ort_spin {
            args.push("--ort-spin".into());
        }
        if settings.runtime.ort_arena {
            args.push("--ort-arena".into());
        }
        args
    };
    let data = tempfile::tempdir()?;
    let graft = Server::start_graft(&graft_args(&manifest.name), &settings.workload.model_dir, data.path()).await?;
    let graft_url = format!("{}/v1/models/{}/classify", graft.base_url, manifest.name);
    let graft_results = load_levels(&settings, &graft_url, &image, content_type).await?;
    print_levels("(b) graft over HTTP", &graft_results);

    let soak = if settings.soak_seconds > 0 {
        Some(soak(&settings, &graft, &graft_url, &image, content_type).await?)
    } else {
        None
    };
    report_metrics(&graft.base_url, &manifest.name).await?;
    drop(graft);
    let int8_results = match &int8_manifest {
        None => None,
        Some(int8) => {
            let server =
                Server::start_graft(&graft_args(&int8.name), &settings.workload.model_dir, data.path()).await?;
            let url = format!("{}/v1/models/{}/classify", server.base_url, int8.name);
            let results = load_levels(&settings, &url, &image, content_type).await?;
            print_levels(&format!("(b) graft over HTTP, {}", int8.name), &results);
            Some(results)
        }
    };

    // (c) The reference Python server.
    let python_results = if settings.python.is_empty() {
        None
    } else {
        let manifest_path = settings.workload.model_dir.join(format!("{}.toml", manifest.name));
        let args = vec![
            "bench/python_server.py".to_owned(),
            "--model".to_owned(),
            manifest_path.to_string_lossy().into_owned(),
            "--intra-threads".to_owned(),
            settings.threads.to_string(),
        ];
        let python = Server::start(&settings.python, &args, &[], "--port").await?;
        let url = format!("{}/v1/models/{}/classify", python.base_url, manifest.name);
        let results = load_levels(&settings, &url, &image, content_type).await?;
        print_levels("(c) reference Python server (Starlette + onnxruntime + Pillow) over HTTP", &results);
        Some(results)
    };

    // (d) Preprocessing alone.
    let (decode_ms, rust_ms) = preprocess_median_ms(&manifest, &image, 200);
    let pillow_ms = if settings.python.is_empty() { None } else { pillow_median_ms(&settings, &manifest)? };
    println!(
        "\n(d) preprocessing alone, {} → {}×{} tensor, one thread, median",
        settings.workload.image.display(),
        manifest.preprocessing.width,
        manifest.preprocessing.height
    );
    println!("    graft:          {rust_ms:>7.3} ms (decoding {decode_ms:.3} ms)");
    if let Some(pillow) = pillow_ms {
        println!("    Pillow + numpy: {pillow:>7.3} ms");
    }

    println!("\nratios");
    let at = |results: &[LoadResult], c: usize| results.iter().find(|r| r.concurrency == c).cloned();
    if let Some(g8) = at(&graft_results, 8) {
        println!(
            "    graft c=8 throughput / raw ONNX Runtime, best:      {:.2} (target ≥ 0.95)",
            g8.images_per_second / raw_best
        );
        if let Some(p8) = python_results.as_deref().and_then(|p| at(p, 8)) {
            println!(
                "    graft c=8 throughput / Python c=8:                  {:.2} (target ≥ 1.5)",
                g8.images_per_second / p8.images_per_second
            );
            println!(
                "    graft c=8 p99 / Python c=8 p99:                     {:.2} (target ≤ 0.6)",
                g8.p99_ms / p8.p99_ms
            );
        }
    }
    if let Some(g8) = at(&graft_results, 8) {
        println!(
            "    graft c=8 throughput / in-process pipeline c=8:     {:.2} (target ≥ 0.9; the server's own cost)",
            g8.images_per_second / fp32_ceiling.images_per_second
        );
    }
    if let (Some((raw_int8, ceiling_int8)), Some(int8_results)) = (&int8, &int8_results)
        && let (Some(i8), Some(g8)) = (at(int8_results, 8), at(&graft_results, 8))
    {
        println!("    INT8 raw ONNX Runtime best / FP32 raw best:         {:.2}", raw_int8 / raw_best);
        println!(
            "    graft INT8 c=8 / graft FP32 c=8:                    {:.2} (target ≥ 1.8)",
            i8.images_per_second / g8.images_per_second
        );
        if let Some(p8) = python_results.as_deref().and_then(|p| at(p, 8)) {
            println!(
                "    graft INT8 c=8 / Python FP32 c=8:                   {:.2} (target ≥ 2.5)",
                i8.images_per_second / p8.images_per_second
            );
        }
        println!(
            "    graft INT8 c=8 / in-process INT8 pipeline c=8:      {:.2} (target ≥ 0.9)",
            i8.images_per_second / ceiling_int8.images_per_second
        );
    }
    if let Some(pillow) = pillow_ms {
        println!("    graft preprocessing / Pillow + numpy:               {:.2} (target ≤ 0.3)", rust_ms / pillow);
    }
    if let Some((first_minute, end)) = soak {
        println!(
            "    graft RSS at the end of the soak / after its first minute: {:.3} ({} KiB → {} KiB; target ≤ 1.10)",
            end as f64 / first_minute as f64,
            first_minute,
            end
        );
    }
    Ok(())
}

/// What graft's own `/metrics` says after the load: kept whole in
/// `target/bench/serving-metrics.txt`, and the model's series printed.
async fn report_metrics(base_url: &str, model: &str) -> anyhow::Result<()> {
    let text = reqwest::get(format!("{base_url}/metrics")).await?.error_for_status()?.text().await?;
    let path = PathBuf::from("target/bench/serving-metrics.txt");
    fs_err::create_dir_all("target/bench")?;
    fs_err::write(&path, &text)?;
    println!("\ngraft's /metrics after the load (whole scrape in {}):", path.display());
    let wanted = |line: &&str| {
        let series = line.split(' ').next().unwrap_or("");
        let of_model = series.contains(&format!("model=\"{model}\""));
        let summary = series.ends_with("_sum") || series.ends_with("_count") || !series.contains("_bucket");
        !line.starts_with('#') && of_model && summary
    };
    for line in text.lines().filter(wanted) {
        println!("  {line}");
    }
    Ok(())
}

async fn load_levels(
    settings: &BenchSettings,
    url: &str,
    image: &[u8],
    content_type: &str,
) -> anyhow::Result<Vec<LoadResult>> {
    // A short warm-up so that connection set-up and first runs are not measured.
    run_load(url, image, content_type, 4, 16, None).await?;
    let mut results = Vec::new();
    for &concurrency in &settings.workload.concurrency {
        results.push(
            run_load(url, image, content_type, concurrency, settings.workload.requests.max(concurrency), None).await?,
        );
    }
    Ok(results)
}

fn print_levels(title: &str, results: &[LoadResult]) {
    println!("\n{title}");
    for r in results {
        println!(
            "    c={:<3} {:>8.1} images/s   p50 {:>7.2} ms   p99 {:>7.2} ms   errors {}",
            r.concurrency, r.images_per_second, r.p50_ms, r.p99_ms, r.errors
        );
    }
}

/// Holds concurrency 32 for `soak_seconds`; returns graft's RSS after the first minute
/// (or a sixth of the soak, if shorter) and at the end.
async fn soak(
    settings: &BenchSettings,
    graft: &Server,
    url: &str,
    image: &[u8],
    content_type: &str,
) -> anyhow::Result<(u64, u64)> {
    let total = Duration::from_secs(settings.soak_seconds);
    let first = Duration::from_secs(60).min(total / 6);
    let started = Instant::now();
    run_load(url, image, content_type, 32, usize::MAX, Some(first)).await?;
    let first_rss = rss_kib(graft.pid)?;
    println!("\nsoak: RSS after {:.0} s at c=32: {first_rss} KiB", started.elapsed().as_secs_f64());
    let rest = total.saturating_sub(started.elapsed());
    let result = run_load(url, image, content_type, 32, usize::MAX, Some(rest)).await?;
    let end_rss = rss_kib(graft.pid)?;
    println!(
        "soak: RSS after {:.0} s: {end_rss} KiB ({:.1} images/s over the rest, {} errors)",
        started.elapsed().as_secs_f64(),
        result.images_per_second,
        result.errors
    );
    Ok((first_rss, end_rss))
}

/// Median milliseconds of decoding, and of decoding plus preprocessing, one image on one thread.
fn preprocess_median_ms(manifest: &Manifest, image: &[u8], iterations: usize) -> (f64, f64) {
    let spec = &manifest.preprocessing;
    let mut out = vec![0.0f32; spec.width as usize * spec.height as usize * 3];
    let limits = DecodeLimits::default();
    let mut decode = Vec::new();
    let mut total = Vec::new();
    for i in 0..iterations + 10 {
        let started = Instant::now();
        // The serving path: DCT-scaled decoding when the image is large enough, then one pass.
        let decoded = decode_for(image, &limits, spec);
        let decoded_at = started.elapsed();
        if let Ok(decoded) = decoded {
            preprocess_into(&decoded.image, spec, &mut out);
        }
        if i >= 10 {
            decode.push(decoded_at.as_secs_f64() * 1000.0);
            total.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(decode), median(total))
}

fn pillow_median_ms(settings: &BenchSettings, manifest: &Manifest) -> anyhow::Result<Option<f64>> {
    let output = std::process::Command::new(&settings.python)
        .args(["bench/preprocess_bench.py", "--iterations", "200", "--image"])
        .arg(&settings.workload.image)
        .arg("--manifest")
        .arg(settings.workload.model_dir.join(format!("{}.toml", manifest.name)))
        .output()
        .context("running bench/preprocess_bench.py")?;
    if !output.status.success() {
        anyhow::bail!("bench/preprocess_bench.py failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let line = String::from_utf8_lossy(&output.stdout);
    let json: serde_json::Value = serde_json::from_str(line.trim().lines().last().unwrap_or("{}"))?;
    Ok(json["pillow_numpy_ms_median"].as_f64())
}

/// One raw ONNX Runtime table: images a second for each layout and batch size.
fn print_raw(title: &str, rates: &[RawRate]) {
    println!("\n{title}");
    for rate in rates {
        println!(
            "    {:<22} batch {:>2}: {:>8.1} images/s",
            rate.layout.to_string(),
            rate.batch,
            rate.images_per_second
        );
    }
}
