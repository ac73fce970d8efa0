//! Acceptance 3 (long, `#[ignore]`, run by `.ci/run`): a short SimCLR run on
//! a real CIFAR-10 subset lifts kNN accuracy above the same backbone at
//! random initialisation (the `knn/top1` point at step 0).

mod common;

use pretext::config::RunConfig;
use pretext::train::{self, DeviceRequest, Outcome, TrainEvent, TrainJob};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

#[test]
#[ignore = "trains for several minutes; run by .ci/run"]
fn simclr_beats_random_init_on_knn() {
    let Some(root) = common::cifar_root() else {
        return;
    };
    let config = RunConfig::from_json(serde_json::json!({
        "name": "learns",
        "method": {"kind": "simclr"},
        "backbone": {"preset": "small"},
        "data": {"path": root, "max_train_images": 2560, "max_test_images": 1000},
        "train": {"epochs": 8, "batch_size": 64, "warmup_epochs": 1, "log_every_steps": 10},
        "eval": {"every_epochs": 8}
    }))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let knn = Arc::new(Mutex::new(Vec::new()));
    let sink_knn = knn.clone();
    let job = TrainJob {
        run_id: 1,
        config,
        run_dir: dir.path().join("run"),
        cache_dir: dir.path().join("cache"),
        device: DeviceRequest::Cpu,
        cancel: Arc::new(AtomicBool::new(false)),
    };
    let outcome = train::run(
        job,
        Box::new(move |ev| {
            if let TrainEvent::Metrics(points) = ev {
                for p in points.into_iter().filter(|p| p.key == "knn/top1") {
                    sink_knn.lock().unwrap().push((p.step, p.value));
                }
            }
        }),
    )
    .unwrap();
    assert_eq!(outcome, Outcome::Completed);
    let knn = knn.lock().unwrap().clone();
    let (first_step, random_init) = knn[0];
    let (_, trained) = *knn.last().unwrap();
    assert_eq!(
        first_step, 0,
        "the first kNN point is the random-init baseline"
    );
    println!(
        "kNN top-1 on 1000 CIFAR-10 test images: random init {:.1}%, after SimCLR {:.1}%",
        random_init * 100.0,
        trained * 100.0
    );
    // 1000 queries: a binomial std of about 1.5 points, so 3 points is a real gain.
    assert!(
        trained > random_init + 0.03,
        "SimCLR did not beat random init: {random_init:.3} -> {trained:.3}"
    );
}
