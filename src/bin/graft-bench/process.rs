//! Servers under test as child processes on a free local port, stopped when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

pub struct Server {
    child: Child,
    pub pid: u32,
    pub base_url: String,
}

impl Server {
    /// Runs `graft args…` on a free port, with `model_dir` and a data folder `data_dir`. The
    /// `graft` binary is the one built beside this benchmark binary (`target/release/graft`).
    pub async fn start_graft(args: &[String], model_dir: &Path, data_dir: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let graft = exe.with_file_name(format!("graft{}", std::env::consts::EXE_SUFFIX));
        anyhow::ensure!(graft.is_file(), "no graft binary beside {} (build it: cargo build --release)", exe.display());
        let env = [
            ("GRAFT_MODEL_DIR", model_dir.to_string_lossy().into_owned()),
            ("GRAFT_DATA_DIR", data_dir.to_string_lossy().into_owned()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Self::start(graft.to_str().context("the graft path is not UTF-8")?, args, &env, "--listen").await
    }

    /// Runs `program args… <port_flag> <port>` (graft takes `--listen 127.0.0.1:PORT`) and
    /// waits until `GET /readyz` answers 200.
    pub async fn start(program: &str, args: &[String], env: &[(&str, &str)], port_flag: &str) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let port_value = if port_flag == "--listen" { format!("127.0.0.1:{port}") } else { port.to_string() };
        let child = Command::new(program)
            .args(args)
            .args([port_flag, &port_value])
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let server = Self { pid: child.id(), child, base_url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(120);
        let client = reqwest::Client::new();
        loop {
            if let Ok(response) = client.get(format!("{}/readyz", server.base_url)).send().await
                && response.status().is_success()
            {
                return Ok(server);
            }
            anyhow::ensure!(Instant::now() < deadline, "{program} did not become ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process, from /proc.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = fs_err::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}
