//! `graft-bench`: the benchmarks, a binary of their own that links the graft library, so the
//! product binary carries none of them. `make bench`, `make bench-tune` and `make soak` run it.

mod load;
mod pipeline;
mod process;
mod raw;
mod serving;
mod soak;
mod tune;
mod v2;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "graft-bench", version, about = "Measure graft: serving, tuning, and a soak under load")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serving speed: raw ONNX Runtime, graft over HTTP, a Python server, preprocessing.
    Serving(Box<serving::BenchSettings>),
    /// Tuning speed: phase 2's step and epoch on a tail, against ONNX Runtime's forward pass.
    Tune(Box<tune::TuneBenchSettings>),
    /// Mixed valid and invalid classify requests held against a server: no 5xx, RSS flat.
    Soak(Box<soak::SoakSettings>),
    /// The Open Inference Protocol (v2 REST and gRPC, images and tensors) beside /v1.
    V2(Box<v2::V2BenchSettings>),
}

fn main() -> ExitCode {
    graft::runtime::pin_candle_threads();
    let cli = Cli::parse();
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Serving(settings) => serving::run(*settings).await,
            Command::Tune(settings) => tune::run(*settings).await,
            Command::Soak(settings) => soak::run(*settings).await,
            Command::V2(settings) => v2::run(*settings).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
