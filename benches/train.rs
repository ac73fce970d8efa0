//! Training throughput: SimCLR images/s for a backbone preset on the CPU
//! (Flex), the share of step time spent waiting for augmented data, and the
//! same step in PyTorch on this machine (bench/simclr_torch.py) with the ratio.
//!
//! Run: `cargo bench --profile dev --bench train [-- small|resnet18 [batch [steps]]]`

use pretext::config::BackbonePreset;
use pretext::train::{bench_simclr_step, DeviceRequest};
use std::process::Command;

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let preset_name = args.first().map(String::as_str).unwrap_or("small");
    let preset = match preset_name {
        "small" => BackbonePreset::Small,
        "resnet18" => BackbonePreset::Resnet18,
        other => panic!("unknown preset {other}; use small or resnet18"),
    };
    let batch: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(128);
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    let report =
        bench_simclr_step(preset, batch, steps, DeviceRequest::Cpu).expect("benchmark run");
    println!(
        "pretext simclr {preset_name} batch {batch} on {} ({threads} threads): {:.1} images/s, {:.0} ms/step, data wait {:.1}% of step time (target < 5%), peak RSS {:.0} MB",
        report.device,
        report.images_per_sec,
        report.step_ms,
        report.data_wait_frac * 100.0,
        peak_rss_mb().unwrap_or(f64::NAN)
    );

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/simclr_torch.py");
    let out = Command::new("python3")
        .args([
            script,
            "--preset",
            preset_name,
            "--batch",
            &batch.to_string(),
            "--steps",
            &steps.to_string(),
            "--threads",
            &threads.to_string(),
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let line = String::from_utf8_lossy(&o.stdout);
            let v: serde_json::Value =
                serde_json::from_str(line.trim()).expect("torch script prints one JSON line");
            let torch = v["images_per_sec"].as_f64().unwrap();
            println!(
                "pytorch {} simclr {preset_name} batch {batch} ({threads} threads, step only): {torch:.1} images/s, {:.0} ms/step",
                v["torch"].as_str().unwrap_or("?"),
                v["step_ms"].as_f64().unwrap_or(f64::NAN)
            );
            println!(
                "ratio pretext/pytorch: {:.2}",
                report.images_per_sec / torch
            );
        }
        Ok(o) => println!(
            "pytorch peer not run: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
        ),
        Err(e) => println!("pytorch peer not run: python3: {e}"),
    }
}
