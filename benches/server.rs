//! Server benchmarks: metric ingest, live latency to 100 watchers, and chart
//! reads of a 1,000,000-point series. Prints figures; asserts nothing.
//!
//! Run: `cargo bench --profile dev --bench server`

use futures_util::StreamExt;
use pretext::executor::WriterMsg;
use pretext::server::{self, ServerConfig};
use pretext::train::{DeviceRequest, MetricPoint, TrainEvent};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn new_run(state: &pretext::web::AppState) -> i64 {
    // A config whose dataset does not exist: the queue fails it at once, so
    // the run exists but no training competes with the measurement.
    let config = pretext::config::RunConfig::from_json(serde_json::json!({
        "name": "bench", "method": {"kind": "simclr"}, "data": {"path": "/nonexistent"}
    }))
    .unwrap();
    let id = state.store.create_run(&config).await.unwrap().id;
    let start = Instant::now();
    while state.store.get_run(id).await.unwrap().unwrap().status
        == pretext::store::RunStatus::Queued
        && start.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    id
}

async fn ingest(state: &pretext::web::AppState) {
    const STEPS: i64 = 200_000;
    const KEYS: [&str; 5] = [
        "train/loss",
        "train/lr",
        "train/images_per_sec",
        "train/embedding_std",
        "train/data_wait_frac",
    ];
    let id = new_run(state).await;
    let writer = state.executor.writer();
    let t0 = Instant::now();
    // The training thread's side: what each report costs it.
    let producer = std::thread::spawn(move || {
        let mut send_time = Duration::ZERO;
        for step in 0..STEPS {
            let points: Vec<MetricPoint> = KEYS
                .iter()
                .map(|k| MetricPoint {
                    key: k.to_string(),
                    step,
                    epoch: 0,
                    value: step as f64,
                    wall_time: now(),
                })
                .collect();
            let t = Instant::now();
            writer
                .send(WriterMsg::Event(id, TrainEvent::Metrics(points)))
                .unwrap();
            send_time += t.elapsed();
        }
        send_time
    });
    let send_time = tokio::task::spawn_blocking(move || producer.join().unwrap())
        .await
        .unwrap();
    let total = STEPS * KEYS.len() as i64;
    while state.store.count_points(id).await.unwrap() < total {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "ingest: {total} points into SQLite in {secs:.2} s = {:.0} points/s (target >= 100000)",
        total as f64 / secs
    );
    println!(
        "ingest: training thread cost {:.0} ns per report of {} points ({:.1} ns/point) — it never waits on SQLite",
        send_time.as_nanos() as f64 / STEPS as f64,
        KEYS.len(),
        send_time.as_nanos() as f64 / total as f64
    );
}

async fn live_latency(state: &pretext::web::AppState, base: &str) {
    const WATCHERS: usize = 100;
    const POINTS: usize = 200;
    let id = new_run(state).await;
    let mut sockets = Vec::new();
    for _ in 0..WATCHERS {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("{base}/api/runs/{id}/live"))
            .await
            .unwrap();
        ws.next().await.unwrap().unwrap(); // snapshot
        sockets.push(ws);
    }
    let mut tasks = Vec::new();
    for mut ws in sockets {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(POINTS);
            while lat.len() < POINTS {
                let Some(Ok(msg)) = ws.next().await else {
                    break;
                };
                let Ok(text) = msg.into_text() else { continue };
                let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                if v["type"] == "points" {
                    let received = now();
                    for p in v["points"].as_array().unwrap() {
                        lat.push((received - p["wall_time"].as_f64().unwrap()) * 1000.0);
                    }
                }
            }
            lat
        }));
    }
    let writer = state.executor.writer();
    for step in 0..POINTS as i64 {
        let p = MetricPoint {
            key: "train/loss".into(),
            step,
            epoch: 0,
            value: 1.0,
            wall_time: now(),
        };
        writer
            .send(WriterMsg::Event(id, TrainEvent::Metrics(vec![p])))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by(f64::total_cmp);
    println!(
        "live: {WATCHERS} watchers x {POINTS} points: latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 < 100 ms; {} deliveries)",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.last().unwrap(),
        all.len()
    );
}

async fn chart_read(state: &pretext::web::AppState, base: &str) {
    const N: i64 = 1_000_000;
    let id = new_run(state).await;
    for chunk in (0..N).collect::<Vec<_>>().chunks(100_000) {
        let pts: Vec<MetricPoint> = chunk
            .iter()
            .map(|&s| MetricPoint {
                key: "train/loss".into(),
                step: s,
                epoch: 0,
                value: (s as f64 * 1e-3).sin(),
                wall_time: s as f64,
            })
            .collect();
        state.store.insert_points(id, &pts).await.unwrap();
    }
    let http = reqwest::Client::new();
    let url = format!("{base}/api/runs/{id}/metrics?keys=train/loss&max_points=1000");
    let mut times = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        let body: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(
            body["metrics"]["train/loss"]["steps"]
                .as_array()
                .unwrap()
                .len()
                <= 1000
        );
    }
    let cold = times.remove(0);
    times.sort_by(f64::total_cmp);
    println!(
        "chart read: {N} points, max_points=1000: first (cold, from SQLite) {cold:.1} ms; then p50 {:.2} ms, p99 {:.2} ms (target < 20 ms)",
        percentile(&times, 0.5),
        percentile(&times, 0.99)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path().to_path_buf()).unwrap();
    config.device = DeviceRequest::Cpu;
    let state = server::start(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve_state = state.clone();
    tokio::spawn(async move { server::serve(listener, serve_state, std::future::pending()).await });
    let which = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let run = |name: &str| which.as_deref().is_none_or(|w| w == name);
    if run("ingest") {
        ingest(&state).await;
    }
    if run("live") {
        live_latency(&state, &format!("ws://{addr}")).await;
    }
    if run("chart") {
        chart_read(&state, &format!("http://{addr}")).await;
    }
}
