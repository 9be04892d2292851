//! `graft soak`: a `graft serve` process under concurrency 32 of mixed valid and invalid
//! classify requests for a set time. Every answer must have the status class its request
//! deserves (2xx for a good image, 4xx for a bad one), no answer may be a 5xx, and the
//! server's RSS at the end may exceed its RSS after the first minute by at most 10 %.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::process::{Server, rss_kib};

#[derive(Debug, Clone, Args)]
pub struct SoakSettings {
    /// The model every request asks (a manifest in --model-dir).
    #[arg(long, default_value = "efficientnet_lite0")]
    pub model: String,
    #[arg(long, env = "GRAFT_MODEL_DIR", default_value = "models")]
    pub model_dir: std::path::PathBuf,
    /// The valid photo of the mix.
    #[arg(long, default_value = "tests/fixtures/generated/images/china.jpg")]
    pub image: std::path::PathBuf,
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
}

/// The server's body limit during the soak, so that one request of the mix is over it.
const BODY_LIMIT: usize = 2 << 20;

/// One kind of request of the mix, and whether it deserves a 2xx.
struct Case {
    name: &'static str,
    path: String,
    content_type: &'static str,
    body: bytes::Bytes,
    valid: bool,
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).expect("PNG encoding to memory");
    out.into_inner()
}

fn cases(model: &str, photo: &[u8]) -> Vec<Case> {
    let classify = format!("/v1/models/{model}/classify");
    let case = |name, path: &str, content_type, body: Vec<u8>, valid| Case {
        name,
        path: path.to_owned(),
        content_type,
        body: body.into(),
        valid,
    };
    let b64 = |bytes: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes);
    vec![
        case("photo", &classify, "image/jpeg", photo.to_vec(), true),
        case(
            "photo as JSON",
            &classify,
            "application/json",
            format!("{{\"images\":[{{\"b64\":\"{}\"}}]}}", b64(photo)).into_bytes(),
            true,
        ),
        case("1,000,000×1 PNG", &classify, "image/png", png(1_000_000, 1), true),
        case("1×200,000 PNG", &classify, "image/png", png(1, 200_000), true),
        case("truncated JPEG", &classify, "image/jpeg", photo[..photo.len() / 2].to_vec(), false),
        case("zero bytes", &classify, "image/jpeg", Vec::new(), false),
        case("garbage", &classify, "image/png", b"\x89PNG\r\n\x1a\nthis is not a png at all".to_vec(), false),
        case(
            "bad base64",
            &classify,
            "application/json",
            br#"{"images":[{"b64":"!!!not base64!!!"}]}"#.to_vec(),
            false,
        ),
        case("malformed JSON", &classify, "application/json", br#"{"images":[{"b64":"#.to_vec(), false),
        case(
            "malformed multipart",
            &classify,
            "multipart/form-data; boundary=xyz",
            b"--xyz\r\nnonsense".to_vec(),
            false,
        ),
        case("text body", &classify, "text/plain", b"hello".to_vec(), false),
        case("over the body limit", &classify, "image/jpeg", vec![0xFF; BODY_LIMIT + 1024], false),
        case("unknown model", "/v1/models/no-such-model/classify", "image/jpeg", photo.to_vec(), false),
    ]
}

#[derive(Default)]
struct Tally {
    answered: Vec<AtomicUsize>,
    server_errors: Vec<AtomicUsize>,
    wrong_class: Vec<AtomicUsize>,
    transport_errors: AtomicUsize,
}

pub async fn run(settings: SoakSettings) -> anyhow::Result<()> {
    let photo = fs_err::read(&settings.image)?;
    let cases = Arc::new(cases(&settings.model, &photo));
    let data = tempfile::tempdir()?;
    let args: Vec<String> = ["serve", "--models", &settings.model, "--workers", "0", "--max-body-bytes"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([BODY_LIMIT.to_string()])
        .collect();
    let server = Server::start_graft(&args, &settings.model_dir, data.path()).await?;
    println!(
        "soak: {} s at c={} against {} ({} kinds of request, {} of them invalid)",
        settings.seconds,
        settings.concurrency,
        settings.model,
        cases.len(),
        cases.iter().filter(|c| !c.valid).count()
    );
    let tally = Arc::new(Tally {
        answered: cases.iter().map(|_| AtomicUsize::new(0)).collect(),
        server_errors: cases.iter().map(|_| AtomicUsize::new(0)).collect(),
        wrong_class: cases.iter().map(|_| AtomicUsize::new(0)).collect(),
        ..Tally::default()
    });
    let total = Duration::from_secs(settings.seconds);
    let first_minute = Duration::from_secs(60).min(total / 6);
    let started = Instant::now();
    let deadline = started + total;
    let next = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::builder().pool_max_idle_per_host(settings.concurrency).build()?;
    let clients: Vec<_> = (0..settings.concurrency)
        .map(|_| {
            let (client, cases, tally, next, base) =
                (client.clone(), cases.clone(), tally.clone(), next.clone(), server.base_url.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed) % cases.len();
                    let case = &cases[i];
                    let sent = client
                        .post(format!("{base}{}", case.path))
                        .header("content-type", case.content_type)
                        .body(case.body.clone())
                        .send()
                        .await;
                    let status = match sent {
                        Ok(response) => {
                            let status = response.status();
                            let _ = response.bytes().await;
                            status
                        }
                        // The server may close a connection whose body it refused to read.
                        Err(_) => {
                            tally.transport_errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    tally.answered[i].fetch_add(1, Ordering::Relaxed);
                    if status.is_server_error() {
                        tally.server_errors[i].fetch_add(1, Ordering::Relaxed);
                    }
                    let right = if case.valid { status.is_success() } else { status.is_client_error() };
                    if !right {
                        tally.wrong_class[i].fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(10).min(deadline.saturating_duration_since(Instant::now()))).await;
        let rss = rss_kib(server.pid).context("the server under soak is gone")?;
        samples.push((started.elapsed(), rss));
        println!("soak: {:>4.0} s  RSS {rss} KiB", started.elapsed().as_secs_f64());
    }
    for client in clients {
        client.await?;
    }
    let first = samples.iter().find(|(at, _)| *at >= first_minute).or(samples.first()).map_or(0, |s| s.1);
    let end = samples.last().map_or(0, |s| s.1);
    println!("\n{:<22} {:>9} {:>6} {:>12}", "request", "answered", "5xx", "wrong class");
    for (i, case) in cases.iter().enumerate() {
        println!(
            "{:<22} {:>9} {:>6} {:>12}",
            case.name,
            tally.answered[i].load(Ordering::Relaxed),
            tally.server_errors[i].load(Ordering::Relaxed),
            tally.wrong_class[i].load(Ordering::Relaxed)
        );
    }
    let sum = |v: &[AtomicUsize]| v.iter().map(|a| a.load(Ordering::Relaxed)).sum::<usize>();
    let (answered, server_errors, wrong) = (sum(&tally.answered), sum(&tally.server_errors), sum(&tally.wrong_class));
    let growth = end as f64 / first.max(1) as f64;
    println!(
        "\nsoak: {answered} answers in {:.0} s, {server_errors} 5xx, {wrong} with the wrong status class, {} \
         connections closed; RSS {first} KiB after the first minute → {end} KiB at the end ({growth:.3}; target ≤ 1.10)",
        started.elapsed().as_secs_f64(),
        tally.transport_errors.load(Ordering::Relaxed),
    );
    anyhow::ensure!(server_errors == 0 && wrong == 0, "the soak saw 5xx or wrongly classed answers");
    anyhow::ensure!(growth <= 1.10, "RSS grew by more than 10 % during the soak");
    Ok(())
}
