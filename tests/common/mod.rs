//! Shared helpers for integration tests: a real server on an ephemeral port,
//! the CIFAR-10 archive unpacked once into a temp cache, small HTTP helpers.
#![allow(dead_code)] // each test binary uses a different subset

use pretext::server::{self, ServerConfig};
use pretext::train::DeviceRequest;
use pretext::web::AppState;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `PRETEXT_CIFAR_ARCHIVE`, else `../shared/data/cifar10-jpg.tar.gz` beside the checkout.
pub fn cifar_archive() -> PathBuf {
    std::env::var_os("PRETEXT_CIFAR_ARCHIVE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar10-jpg.tar.gz")
        })
}

/// The CIFAR-10 image folder, unpacked once per machine into the system temp
/// dir (never the work tree). `None`, after saying why, when the archive is
/// absent; in CI (which always has it) that is a failure instead.
pub fn cifar_root() -> Option<PathBuf> {
    static ROOT: OnceLock<Option<PathBuf>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let archive = cifar_archive();
        if !archive.exists() {
            assert!(std::env::var_os("CI").is_none(), "CIFAR-10 archive not found at {} in CI", archive.display());
            eprintln!(
                "SKIPPED: CIFAR-10 archive not found at {} (set PRETEXT_CIFAR_ARCHIVE; see ../shared/data/README.md)",
                archive.display()
            );
            return None;
        }
        let cache = std::env::temp_dir().join("pretext-test-cache");
        let root = cache.join("cifar10-jpg").join("cifar10");
        if root.join("test").is_dir() {
            return Some(root);
        }
        std::fs::create_dir_all(&cache).unwrap();
        // Unpack beside the final name, then rename: a concurrent or killed
        // test never sees a half-unpacked tree under the final name.
        let tmp = tempfile::tempdir_in(&cache).unwrap();
        let file = std::fs::File::open(&archive).unwrap();
        tar::Archive::new(flate2::read::GzDecoder::new(file)).unpack(tmp.path()).unwrap();
        let tmp = tmp.keep();
        if std::fs::rename(&tmp, cache.join("cifar10-jpg")).is_err() {
            let _ = std::fs::remove_dir_all(&tmp); // another process won the race
        }
        assert!(root.join("test").is_dir(), "unexpected archive layout under {}", root.display());
        Some(root)
    })
    .clone()
}

pub struct TestServer {
    pub base: String,
    pub ws_base: String,
    pub state: AppState,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl TestServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::new(dir.path().join("data")).unwrap();
        config.device = DeviceRequest::Cpu;
        let state = server::start(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serve_state = state.clone();
        tokio::spawn(async move {
            server::serve(listener, serve_state, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        TestServer {
            base: format!("http://{addr}"),
            ws_base: format!("ws://{addr}"),
            state,
            http: reqwest::Client::new(),
            _dir: dir,
            _shutdown: tx,
        }
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls the run until `pred` holds or `timeout` passes.
    pub async fn wait_run(
        &self,
        id: i64,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let (_, run) = self.get(&format!("/api/runs/{id}")).await;
            if pred(&run) {
                return run;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting on run {id}: {run}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A SimCLR run on a small CIFAR-10 subset: `epochs` epochs of `steps_per_epoch` steps.
pub fn quick_simclr(name: &str, epochs: usize, batch: usize, steps_per_epoch: usize) -> Value {
    json!({
        "name": name,
        "method": {"kind": "simclr", "projection_hidden_dim": 128, "projection_dim": 64},
        "backbone": {"preset": "small"},
        "data": {"path": cifar_root().unwrap_or_else(|| PathBuf::from("/cifar-archive-absent")), "max_train_images": batch * steps_per_epoch, "max_test_images": 100, "workers": 1},
        "train": {"epochs": epochs, "batch_size": batch, "warmup_epochs": 0, "log_every_steps": 1},
        "eval": {"knn_k": 20}
    })
}
