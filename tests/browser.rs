//! Acceptance 4: a real headless Chromium, driven over WebDriver by
//! chromedriver, watches a live run page and its chart gains points without
//! a reload. `.ci/run` installs Debian's chromium and chromium-driver.

mod common;

use common::{quick_simclr, TestServer};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(bin: &[&str]) -> Option<String> {
    bin.iter()
        .map(|b| b.to_string())
        .find(|b| std::path::Path::new(b).exists())
}

impl Driver {
    async fn start() -> Option<Driver> {
        let driver = find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let chromium = find(&["/usr/bin/chromium", "/usr/lib/chromium/chromium"]);
        let (Some(driver), Some(chromium)) = (driver, chromium) else {
            // CI installs both (see .ci/run); elsewhere say why nothing ran.
            assert!(
                std::env::var_os("CI").is_none(),
                "chromium/chromedriver missing in CI: .ci/run should install them"
            );
            eprintln!("SKIPPED: chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let mut d = Driver {
            child,
            base,
            http,
            session: String::new(),
        };
        let start = Instant::now();
        while d
            .http
            .get(format!("{}/status", d.base))
            .send()
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap().keep();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-quic", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display())
            ]}
        }}});
        let r: Value = d
            .http
            .post(format!("{}/session", d.base))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        d.session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_string();
        Some(d)
    }

    async fn goto(&self, url: &str) {
        let r = self
            .http
            .post(format!("{}/session/{}/url", self.base, self.session))
            .json(&json!({"url": url}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    async fn eval(&self, script: &str) -> Value {
        let r: Value = self
            .http
            .post(format!(
                "{}/session/{}/execute/sync",
                self.base, self.session
            ))
            .json(&json!({"script": script, "args": []}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["value"].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_page_chart_grows_live_without_reload() {
    if common::cifar_root().is_none() {
        return;
    }
    let Some(driver) = Driver::start().await else {
        return;
    };
    let server = TestServer::start().await;
    let (code, run) = server
        .post("/api/runs", &quick_simclr("browser", 50, 32, 4))
        .await;
    assert_eq!(code, 201);
    let id = run["id"].as_i64().unwrap();

    driver.goto(&format!("{}/runs/{id}", server.base)).await;
    // Mark this page instance: a reload would drop the marker.
    let ready = Instant::now();
    loop {
        let v = driver.eval("if (!window.pretext) return -1; window.__sameDocument = true; return window.pretext.pointCount('train/loss');").await;
        if v.as_i64().is_some_and(|n| n >= 0) {
            break;
        }
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "run page never exposed window.pretext: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = driver
        .eval("return window.pretext.pointCount('train/loss')")
        .await
        .as_i64()
        .unwrap();
    let start = Instant::now();
    let grown = loop {
        let v = driver.eval("return [window.__sameDocument === true, window.pretext.pointCount('train/loss'), document.querySelector('canvas') !== null]").await;
        let (same, count, canvas) = (
            v[0].as_bool().unwrap(),
            v[1].as_i64().unwrap(),
            v[2].as_bool().unwrap(),
        );
        assert!(same, "the page reloaded");
        if count > first + 1 {
            assert!(canvas, "no chart canvas on the page");
            break count;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "chart stayed at {count} points (started at {first})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // What the chart shows is what the server stored (no invented points).
    let (_, stored) = server
        .get(&format!("/api/runs/{id}/metrics?keys=train/loss"))
        .await;
    let stored_len = stored["metrics"]["train/loss"]["steps"]
        .as_array()
        .unwrap()
        .len() as i64;
    assert!(
        grown <= stored_len,
        "chart has {grown} points, server stored {stored_len}"
    );
    let status = driver.eval("return document.body.innerText").await;
    assert!(
        status.as_str().unwrap().contains("running"),
        "status badge not shown as running"
    );
    server
        .post(&format!("/api/runs/{id}/cancel"), &json!({}))
        .await;
    let _ = driver
        .http
        .delete(format!("{}/session/{}", driver.base, driver.session))
        .send()
        .await;
}
