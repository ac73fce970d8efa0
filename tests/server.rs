//! End-to-end tests of the real server: REST, WebSocket, queue, training,
//! checkpoint downloads.

mod common;

use common::{quick_simclr, TestServer};
use futures_util::StreamExt;
use pretext::train::MetricPoint;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(server: &TestServer, id: i64) -> Ws {
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("{}/api/runs/{id}/live", server.ws_base))
            .await
            .unwrap();
    ws
}

async fn next_json(ws: &mut Ws, timeout: Duration) -> Value {
    loop {
        let msg = tokio::time::timeout(timeout, ws.next())
            .await
            .expect("websocket went quiet")
            .expect("socket closed")
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// Acceptance 1: submit, follow live to completion, points stored, both
/// checkpoint downloads, and the safetensors export holds the backbone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simclr_run_end_to_end_over_rest_and_websocket() {
    if common::cifar_root().is_none() {
        return;
    }
    let server = TestServer::start().await;
    let (status, run) = server
        .post("/api/runs", &quick_simclr("e2e", 2, 32, 4))
        .await;
    assert_eq!(status, 201, "{run}");
    let id = run["id"].as_i64().unwrap();
    assert_eq!(run["status"], "queued");
    assert_eq!(run["method"], "simclr");

    let mut ws = connect(&server, id).await;
    let snapshot = next_json(&mut ws, Duration::from_secs(10)).await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");

    let mut status = snapshot["run"]["status"].as_str().unwrap().to_string();
    let mut live_points_while_running = 0usize;
    let mut live_points: Vec<(String, i64)> = Vec::new();
    let mut saw_progress = false;
    let mut saw_checkpoint = false;
    while status != "completed" {
        let msg = next_json(&mut ws, Duration::from_secs(300)).await;
        match msg["type"].as_str().unwrap() {
            "points" => {
                for p in msg["points"].as_array().unwrap() {
                    live_points.push((
                        p["key"].as_str().unwrap().to_string(),
                        p["step"].as_i64().unwrap(),
                    ));
                    if status == "running" {
                        live_points_while_running += 1;
                    }
                }
            }
            "status" => {
                status = msg["run"]["status"].as_str().unwrap().to_string();
                assert!(
                    !["failed", "cancelled"].contains(&status.as_str()),
                    "run ended badly: {msg}"
                );
            }
            "progress" => saw_progress = true,
            "checkpoint" => saw_checkpoint = true,
            other => panic!("unexpected message type {other}: {msg}"),
        }
    }
    assert!(
        live_points_while_running > 0,
        "no metric point arrived while the run was running"
    );
    assert!(saw_progress && saw_checkpoint);

    let (_, run) = server.get(&format!("/api/runs/{id}")).await;
    assert_eq!(run["status"], "completed");
    assert_eq!(run["device"], "cpu");
    assert_eq!(run["progress"]["step"], 8);

    // Every live point is stored, for every key the run page charts.
    let (code, stored) = server.get(&format!("/api/runs/{id}/metrics")).await;
    assert_eq!(code, 200);
    for key in [
        "train/loss",
        "train/lr",
        "train/images_per_sec",
        "train/embedding_std",
        "knn/top1",
    ] {
        assert!(
            stored["metrics"][key]["steps"]
                .as_array()
                .is_some_and(|s| !s.is_empty()),
            "no stored {key}: {stored}"
        );
    }
    for (key, step) in &live_points {
        let steps = stored["metrics"][key]["steps"].as_array().unwrap();
        assert!(
            steps.contains(&json!(step)),
            "live point {key}@{step} not stored"
        );
    }
    let knn = stored["metrics"]["knn/top1"]["values"].as_array().unwrap();
    assert!(knn
        .iter()
        .all(|v| (0.0..=1.0).contains(&v.as_f64().unwrap())));

    // Checkpoints: one per epoch plus the export.
    let (_, list) = server.get(&format!("/api/runs/{id}/checkpoints")).await;
    let names: Vec<&str> = list["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"backbone.safetensors"), "{names:?}");
    let epochs: Vec<&&str> = names.iter().filter(|n| n.starts_with("epoch-")).collect();
    assert_eq!(epochs.len(), 2, "{names:?}");
    // A watcher joining after the end gets the checkpoints in its snapshot.
    let mut late = connect(&server, id).await;
    let snap = next_json(&mut late, Duration::from_secs(10)).await;
    assert_eq!(
        snap["checkpoints"].as_array().unwrap().len(),
        names.len(),
        "{snap}"
    );
    assert_eq!(snap["run"]["status"], "completed");
    let last = list["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with("epoch-"))
        .last()
        .unwrap()
        .clone();
    let url = format!("{}{}", server.base, last["url"].as_str().unwrap());

    let whole = server.http.get(&url).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    let len: u64 = whole.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let etag = whole.headers()["etag"].to_str().unwrap().to_string();
    let bytes = whole.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, len);
    assert_eq!(len, last["bytes"].as_u64().unwrap());
    let sha = hex::encode(Sha256::digest(&bytes));
    assert_eq!(sha, last["sha256"].as_str().unwrap());
    assert_eq!(etag, format!("\"{sha}\""));

    let part = server
        .http
        .get(&url)
        .header("range", "bytes=10-99")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"].to_str().unwrap(),
        format!("bytes 10-99/{len}")
    );
    assert_eq!(part.headers()["content-length"].to_str().unwrap(), "90");
    assert_eq!(&part.bytes().await.unwrap()[..], &bytes[10..100]);

    let unsatisfiable = server
        .http
        .get(&url)
        .header("range", format!("bytes={len}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(unsatisfiable.status(), 416);
    let cached = server
        .http
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);

    // The export opens as safetensors and holds the backbone, not the head.
    let export = server
        .http
        .get(format!(
            "{}/api/runs/{id}/checkpoints/backbone.safetensors",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), 200);
    let export = export.bytes().await.unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&export).unwrap();
    let names: Vec<String> = tensors.names().into_iter().map(String::from).collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("stem") && n.ends_with("weight")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.contains("running_mean")),
        "batch-norm statistics missing: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains("projection")),
        "head leaked into the backbone export: {names:?}"
    );
    let stem = names
        .iter()
        .find(|n| {
            n.starts_with("stem")
                && n.ends_with("weight")
                && tensors.tensor(n).unwrap().shape().len() == 4
        })
        .unwrap();
    assert_eq!(tensors.tensor(stem).unwrap().shape(), &[16, 3, 3, 3]);
}

/// Acceptance 2: a running run stops and is `cancelled`; a queued one never starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_run_and_a_queued_one_never_starts() {
    if common::cifar_root().is_none() {
        return;
    }
    let server = TestServer::start().await;
    let (_, long) = server
        .post("/api/runs", &quick_simclr("long", 500, 32, 4))
        .await;
    let (_, queued) = server
        .post("/api/runs", &quick_simclr("queued", 1, 32, 4))
        .await;
    let (long, queued) = (long["id"].as_i64().unwrap(), queued["id"].as_i64().unwrap());

    server
        .wait_run(long, Duration::from_secs(120), |r| {
            r["progress"]["step"].as_i64() >= Some(1)
        })
        .await;
    let (code, body) = server
        .post(&format!("/api/runs/{queued}/cancel"), &json!({}))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "cancelled");

    let (code, _) = server
        .post(&format!("/api/runs/{long}/cancel"), &json!({}))
        .await;
    assert_eq!(code, 202);
    let run = server
        .wait_run(long, Duration::from_secs(60), |r| r["status"] != "running")
        .await;
    assert_eq!(run["status"], "cancelled", "{run}");
    assert!(
        run["progress"]["step"].as_i64().unwrap()
            < run["progress"]["total_steps"].as_i64().unwrap()
    );

    // The queued one was never claimed, and a finished run cannot be cancelled again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, q) = server.get(&format!("/api/runs/{queued}")).await;
    assert_eq!(q["status"], "cancelled");
    assert!(q["started_at"].is_null(), "{q}");
    let (code, body) = server
        .post(&format!("/api/runs/{long}/cancel"), &json!({}))
        .await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
}

/// Acceptance 2: a bad config gets a 400 naming the field; other bad input too.
#[tokio::test]
async fn bad_input_gets_a_json_4xx_naming_the_problem() {
    let server = TestServer::start().await;
    let mut config = quick_simclr("bad", 1, 32, 4);
    config["train"]["batch_size"] = json!("many");
    let (code, body) = server.post("/api/runs", &config).await;
    assert_eq!(code, 400);
    assert_eq!(body["error"]["code"], "invalid_config");
    assert_eq!(body["error"]["field"], "train.batch_size");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("train.batch_size"),
        "{body}"
    );

    let mut config = quick_simclr("bad", 1, 32, 4);
    config["method"]["temperature"] = json!(-1.0);
    let (code, body) = server.post("/api/runs", &config).await;
    assert_eq!(
        (code, body["error"]["field"].as_str()),
        (400, Some("method.temperature"))
    );

    let r = server
        .http
        .post(format!("{}/api/runs", server.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json");

    let r = server
        .http
        .put(format!("{}/api/runs", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "method_not_allowed"
    );
    let r = server
        .http
        .post(format!("{}/api/runs", server.base))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "unsupported_media_type"
    );
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(3 << 20));
    let r = server
        .http
        .post(format!("{}/api/runs", server.base))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "body_too_large"
    );

    assert_eq!(server.get("/api/runs/999").await.0, 404);
    assert_eq!(server.get("/api/runs/abc").await.0, 400);
    assert_eq!(
        server.get("/api/runs/999/metrics").await.1["error"]["code"],
        "not_found"
    );
    assert_eq!(server.get("/api/nope").await.0, 404);
    let (code, _) = server.get("/api/runs").await;
    assert_eq!(code, 200);
    let (code, health) = server.get("/api/health").await;
    assert_eq!((code, health["status"].as_str()), (200, Some("ok")));
}

fn synthetic(key: &str, steps: std::ops::Range<i64>, f: impl Fn(i64) -> f64) -> Vec<MetricPoint> {
    steps
        .map(|s| MetricPoint {
            key: key.into(),
            step: s,
            epoch: 0,
            value: f(s),
            wall_time: s as f64,
        })
        .collect()
}

async fn stored_loss_points(server: &TestServer, id: i64) -> usize {
    let (_, all) = server
        .get(&format!("/api/runs/{id}/metrics?keys=train/loss"))
        .await;
    all["metrics"]["train/loss"]["steps"]
        .as_array()
        .unwrap()
        .len()
}

/// Acceptance 2: `max_points` keeps each bucket's extremes (a spike every
/// n-th sampling would drop survives), and no budget returns every point.
#[tokio::test]
async fn downsampled_metrics_keep_extremes() {
    let server = TestServer::start().await;
    let (_, run) = server
        .post(
            "/api/runs",
            &json!({"method": {"kind": "simclr"}, "data": {"path": "/nonexistent"}}),
        )
        .await;
    let id = run["id"].as_i64().unwrap();
    let points = synthetic("train/loss", 0..10_000, |s| match s {
        4_321 => 100.0,
        7_777 => -100.0,
        _ => (s as f64 / 1000.0).sin(),
    });
    server.state.store.insert_points(id, &points).await.unwrap();

    assert_eq!(stored_loss_points(&server, id).await, 10_000);

    let (_, few) = server
        .get(&format!(
            "/api/runs/{id}/metrics?keys=train/loss&max_points=200"
        ))
        .await;
    let s = &few["metrics"]["train/loss"];
    let values: Vec<f64> = s["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let steps: Vec<i64> = s["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert!(
        values.len() <= 200 && values.len() > 150,
        "{} points",
        values.len()
    );
    assert!(
        values.contains(&100.0) && values.contains(&-100.0),
        "extremes lost"
    );
    assert_eq!((steps[0], *steps.last().unwrap()), (0, 9_999));
    assert!(steps.windows(2).all(|w| w[0] < w[1]));

    // Points written after the first (cached) read are visible, replayed ones are not duplicated.
    server
        .state
        .store
        .insert_points(id, &synthetic("train/loss", 9_990..10_010, |_| 0.5))
        .await
        .unwrap();
    server
        .state
        .cache
        .append(id, &synthetic("train/loss", 9_990..10_010, |_| 0.5))
        .await;
    assert_eq!(stored_loss_points(&server, id).await, 10_010);

    let (code, body) = server
        .get(&format!("/api/runs/{id}/metrics?max_points=1"))
        .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
}

/// Acceptance 2: a watcher joining mid-run gets the history, then live points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_watcher_gets_history_then_live_points() {
    if common::cifar_root().is_none() {
        return;
    }
    let server = TestServer::start().await;
    let (_, run) = server
        .post("/api/runs", &quick_simclr("watchers", 3, 32, 4))
        .await;
    let id = run["id"].as_i64().unwrap();
    let mut first = connect(&server, id).await;
    assert_eq!(
        next_json(&mut first, Duration::from_secs(10)).await["type"],
        "snapshot"
    );

    // Wait until a few loss points exist, then join.
    server
        .wait_run(id, Duration::from_secs(180), |r| {
            r["progress"]["step"].as_i64() >= Some(3)
        })
        .await;
    let mut second = connect(&server, id).await;
    let snap = next_json(&mut second, Duration::from_secs(10)).await;
    assert_eq!(snap["type"], "snapshot");
    let history = snap["metrics"]["train/loss"]["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!history.is_empty(), "snapshot had no history: {snap}");
    let last_hist = history.last().unwrap().as_i64().unwrap();

    // Then it receives live points beyond its history, as the first watcher does.
    let mut newer = false;
    while !newer {
        let msg = next_json(&mut second, Duration::from_secs(120)).await;
        if msg["type"] == "points" {
            newer = msg["points"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["key"] == "train/loss" && p["step"].as_i64().unwrap() > last_hist);
        }
        assert_ne!(
            msg["type"], "status",
            "run ended before a live point: {msg}"
        );
    }
    let mut first_saw = false;
    while !first_saw {
        let msg = next_json(&mut first, Duration::from_secs(60)).await;
        if msg["type"] == "points" {
            first_saw = msg["points"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["step"].as_i64().unwrap() > last_hist);
        }
    }
    server
        .post(&format!("/api/runs/{id}/cancel"), &json!({}))
        .await;
}

/// The HTML pages render, with a 404 page for unknown runs.
#[tokio::test]
async fn pages_render() {
    let server = TestServer::start().await;
    let (_, run) = server.post("/api/runs", &json!({"name": "page <test>", "method": {"kind": "simclr"}, "data": {"path": "/nonexistent"}})).await;
    let id = run["id"].as_i64().unwrap();
    let get = |p: String| {
        let http = server.http.clone();
        let base = server.base.clone();
        async move {
            let r = http.get(format!("{base}{p}")).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (code, html) = get("/".into()).await;
    assert_eq!(code, 200);
    assert!(
        html.contains("page &lt;test&gt;") || html.contains("page &#60;test&#62;"),
        "name not escaped/listed"
    );
    assert!(!html.contains("page <test>"));
    let (code, html) = get(format!("/runs/{id}")).await;
    assert_eq!(code, 200);
    assert!(html.contains(&format!("data-run-id=\"{id}\"")));
    assert!(html.contains("/static/vendor/uplot/uPlot.iife.min.js"));
    let (code, html) = get("/runs/new".into()).await;
    assert_eq!(code, 200);
    assert!(html.contains("simclr"));
    let (code, _) = get("/runs/4242".into()).await;
    assert_eq!(code, 404);
    let (code, js) = get("/static/vendor/uplot/uPlot.iife.min.js".into()).await;
    assert_eq!(code, 200);
    assert!(js.contains("uPlot"));
}

/// A run left `running` by a previous process (killed mid-run) is marked
/// failed with a reason at the next start, not left hanging.
#[tokio::test]
async fn runs_left_running_by_a_dead_process_fail_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let store = pretext::store::Store::open(&data_dir.join("pretext.sqlite"))
        .await
        .unwrap();
    let config = pretext::config::RunConfig::from_json(quick_simclr("orphan", 1, 32, 4)).unwrap();
    let id = store.create_run(&config).await.unwrap().id;
    let claimed = store.claim_next_run().await.unwrap().unwrap();
    assert_eq!(
        (claimed.id, claimed.status),
        (id, pretext::store::RunStatus::Running)
    );
    drop(store);

    let mut server_config = pretext::server::ServerConfig::new(data_dir).unwrap();
    server_config.device = pretext::train::DeviceRequest::Cpu;
    let state = pretext::server::start(server_config).await.unwrap();
    let run = state.store.get_run(id).await.unwrap().unwrap();
    assert_eq!(run.status, pretext::store::RunStatus::Failed);
    assert!(
        run.error
            .as_deref()
            .unwrap_or("")
            .contains("server stopped"),
        "{:?}",
        run.error
    );
    assert!(run.finished_at.is_some());
}

/// `PRETEXT_DEVICE=cuda` on a machine without a GPU fails that run with a
/// clear error; the server keeps serving. (Skipped where a GPU exists.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuda_requested_without_a_gpu_fails_the_run_not_the_server() {
    if pretext::train::device::cuda_probe().is_ok() {
        eprintln!("SKIPPED: this machine has a CUDA device");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = pretext::server::ServerConfig::new(dir.path().join("data")).unwrap();
    config.device = pretext::train::DeviceRequest::Cuda;
    let state = pretext::server::start(config).await.unwrap();
    let run_config = pretext::config::RunConfig::from_json(quick_simclr("cuda", 1, 32, 4)).unwrap();
    let id = state.store.create_run(&run_config).await.unwrap().id;
    state.executor.wake();
    let start = std::time::Instant::now();
    let run = loop {
        let run = state.store.get_run(id).await.unwrap().unwrap();
        if run.status.is_terminal() {
            break run;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "run never ended: {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(run.status, pretext::store::RunStatus::Failed);
    let error = run.error.unwrap_or_default();
    assert!(error.to_lowercase().contains("cuda"), "{error}");
    // The queue still works afterwards.
    let next = state.store.create_run(&run_config).await.unwrap();
    assert_eq!(next.status, pretext::store::RunStatus::Queued);
}
