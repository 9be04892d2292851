//! PostgreSQL stopped under load and started again: while it is down every request that
//! needs it is answered 503 problem+json within 2 s (no hang, no panic), and graft serves
//! again once it is back, without a restart. The cluster is a private one this test
//! creates on its own port; the machine's shared cluster is never touched.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use graft::config::Limits;

/// A PostgreSQL cluster in a temporary folder, run as the `postgres` user (the server
/// refuses to run as root).
struct PrivateCluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateCluster {
    fn create() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's binaries under /usr/lib/postgresql")
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").is_file())
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        run_as_postgres(&["chown", "postgres", &dir.path().display().to_string()], true);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cluster = Self { bin, data, port, _dir: dir };
        cluster.pg(&["initdb", "-D", &cluster.data_str(), "-U", "postgres", "--auth=trust", "-E", "UTF8"]);
        cluster
    }

    fn data_str(&self) -> String {
        self.data.display().to_string()
    }

    fn pg(&self, args: &[&str]) {
        let program = self.bin.join(args[0]).display().to_string();
        let mut full = vec![program.as_str()];
        full.extend(&args[1..]);
        run_as_postgres(&full, false);
    }

    fn start(&self) {
        let socket_dir = self.data.parent().unwrap().display().to_string();
        let options = format!("-p {} -k {socket_dir} -c listen_addresses=127.0.0.1", self.port);
        self.pg(&["pg_ctl", "-D", &self.data_str(), "-o", &options, "-w", "-l", "/dev/null", "start"]);
    }

    fn stop(&self) {
        self.pg(&["pg_ctl", "-D", &self.data_str(), "-m", "immediate", "-w", "stop"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data_str(), "-m", "immediate", "stop"])
            .output();
    }
}

/// Runs `args` as the postgres user (or, with `as_root`, as this user).
fn run_as_postgres(args: &[&str], as_root: bool) {
    let output = if as_root {
        Command::new(args[0]).args(&args[1..]).output()
    } else {
        Command::new("runuser").args(["-u", "postgres", "--"]).args(args).output()
    }
    .unwrap();
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

async fn list_datasets(url: &str) -> (u16, Duration, Option<serde_json::Value>, Option<String>) {
    let started = Instant::now();
    let response = client().get(format!("{url}/v1/datasets")).timeout(Duration::from_secs(10)).send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    let body = response.json().await.ok();
    (status, started.elapsed(), body, content_type)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_503_and_graft_recovers_without_a_restart() {
    if !Path::new("/usr/sbin/runuser").exists() && !Path::new("/usr/bin/runuser").exists() {
        panic!("runuser (util-linux) is needed to run a private PostgreSQL as the postgres user");
    }
    let cluster = PrivateCluster::create();
    cluster.start();
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let server = start_server_on(&fixture_models(), Limits::default(), &cluster.url(), data).await;
    let (status, _, _, _) = list_datasets(&server.url).await;
    assert_eq!(status, 200, "graft serves on the private cluster");

    cluster.stop();
    for _ in 0..5 {
        let (status, took, body, content_type) = list_datasets(&server.url).await;
        assert_eq!(status, 503, "{body:?}");
        assert_eq!(content_type.as_deref(), Some("application/problem+json"));
        assert!(took < Duration::from_millis(2500), "a request during the outage took {took:?}");
        let detail = body.as_ref().and_then(|b| b["detail"].as_str()).unwrap_or_default().to_owned();
        assert!(detail.contains("database cannot be reached"), "{detail}");
    }
    // Requests that need no database go on.
    let response = post_image(&server.url, "tiny_nchw", "image/png", "img0.png").await;
    assert_eq!(response.status(), 200);

    cluster.start();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _, body, _) = list_datasets(&server.url).await;
        if status == 200 {
            assert_eq!(body.unwrap()["datasets"], serde_json::json!([]));
            break;
        }
        assert!(Instant::now() < deadline, "graft did not recover after the database came back: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
