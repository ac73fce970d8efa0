//! Background batch producer: shuffles, augments views on worker threads, prefetches into a bounded channel.

use super::augment::{augment_into, AugmentParams};
use super::data::ImageSet;
use super::TrainError;
use crossbeam_channel::{bounded, Receiver, SendTimeoutError};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Batches buffered ahead of the training thread. A few absorb jitter in
/// augmentation time; more would only hold memory (PyTorch's DataLoader
/// defaults to 2 per worker).
const PREFETCH: usize = 4;

/// One batch of augmented views, host-side.
#[derive(Debug)]
pub struct HostBatch {
    /// Images in the batch.
    pub batch: usize,
    /// Side length of every view.
    pub size: usize,
    /// One `batch * 3 * size * size` CHW buffer per view; image `i` is at the
    /// same position in every view.
    pub views: Vec<Vec<f32>>,
    /// Epoch (0-based) and batch index within it.
    pub epoch: usize,
    pub index: usize,
}

/// What to produce.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Epochs `start_epoch..end_epoch` are produced, then the channel closes.
    pub start_epoch: usize,
    pub end_epoch: usize,
    pub seed: u64,
    /// Augmentation threads; 0 = one per available core.
    pub workers: usize,
    /// One recipe per view.
    pub recipes: Vec<AugmentParams>,
}

/// Handle to the producer thread; dropping it stops the thread.
pub struct Loader {
    rx: Receiver<HostBatch>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// Full batches per epoch (the last incomplete batch is dropped).
    pub batches_per_epoch: usize,
}

impl Loader {
    /// Starts the producer. Each epoch is a fresh permutation seeded by
    /// `(seed, epoch)`, and every view of every image has its own RNG seeded
    /// by `(seed, epoch, position, view)`, so the batches are the same
    /// whatever the number of workers.
    pub fn spawn(images: Arc<ImageSet>, config: LoaderConfig) -> Result<Self, TrainError> {
        let batches_per_epoch = images.len() / config.batch_size.max(1);
        if batches_per_epoch == 0 {
            return Err(TrainError::Data(format!(
                "{} training images are fewer than one batch of {}",
                images.len(),
                config.batch_size
            )));
        }
        let workers = if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.workers
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("augment-{i}"))
            .build()
            .map_err(|e| TrainError::Other(format!("cannot start augmentation threads: {e}")))?;
        let (tx, rx) = bounded(PREFETCH);
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("batch-loader".into())
            .spawn(move || {
                for epoch in config.start_epoch..config.end_epoch {
                    let order = epoch_order(images.len(), config.seed, epoch);
                    for index in 0..batches_per_epoch {
                        let picks =
                            &order[index * config.batch_size..(index + 1) * config.batch_size];
                        let batch =
                            pool.install(|| make_batch(&images, picks, &config, epoch, index));
                        let mut batch = batch;
                        // Time out now and then to notice `stop` while the channel is full.
                        loop {
                            if stop_flag.load(Ordering::Relaxed) {
                                return;
                            }
                            match tx.send_timeout(batch, Duration::from_millis(50)) {
                                Ok(()) => break,
                                Err(SendTimeoutError::Timeout(b)) => batch = b,
                                Err(SendTimeoutError::Disconnected(_)) => return,
                            }
                        }
                    }
                }
            })
            .map_err(|e| TrainError::Other(format!("cannot start the loader thread: {e}")))?;
        Ok(Self {
            rx,
            stop,
            handle: Some(handle),
            batches_per_epoch,
        })
    }

    /// The next batch, blocking until it is ready; `None` once every epoch has
    /// been delivered (or the producer died).
    pub fn next(&self) -> Option<HostBatch> {
        self.rx.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            // The producer checks `stop` at least every 50 ms plus one batch.
            let _ = h.join();
        }
    }
}

/// SplitMix64 finaliser (Steele et al. 2014): decorrelates nearby seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut SmallRng::seed_from_u64(mix(seed ^ mix(epoch as u64))));
    order
}

fn make_batch(
    images: &ImageSet,
    picks: &[usize],
    config: &LoaderConfig,
    epoch: usize,
    index: usize,
) -> HostBatch {
    let size = images.size;
    let per_image = 3 * size * size;
    let views = config
        .recipes
        .iter()
        .enumerate()
        .map(|(v, recipe)| {
            let mut buf = vec![0.0f32; picks.len() * per_image];
            buf.par_chunks_mut(per_image)
                .zip(picks.par_iter())
                .enumerate()
                .for_each(|(i, (out, &img))| {
                    let position = (index * config.batch_size + i) as u64;
                    let stream = mix(mix(mix(config.seed ^ epoch as u64) ^ position) ^ v as u64);
                    augment_into(
                        images.image(img),
                        size,
                        recipe,
                        &mut SmallRng::seed_from_u64(stream),
                        out,
                    );
                });
            buf
        })
        .collect();
    HostBatch {
        batch: picks.len(),
        size,
        views,
        epoch,
        index,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(n: usize, size: usize) -> Arc<ImageSet> {
        let pixels = (0..n * size * size * 3)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        Arc::new(ImageSet {
            size,
            pixels,
            labels: vec![0; n],
            classes: vec!["x".into()],
        })
    }

    fn config(workers: usize) -> LoaderConfig {
        LoaderConfig {
            batch_size: 4,
            start_epoch: 0,
            end_epoch: 2,
            seed: 9,
            workers,
            recipes: vec![AugmentParams::simclr_cifar10(); 2],
        }
    }

    #[test]
    fn yields_full_batches_for_every_epoch_then_stops() {
        let loader = Loader::spawn(images(10, 8), config(2)).unwrap();
        assert_eq!(loader.batches_per_epoch, 2); // 10 / 4, last 2 images dropped
        let mut seen = Vec::new();
        while let Some(b) = loader.next() {
            assert_eq!(b.views.len(), 2);
            assert_eq!(b.views[0].len(), 4 * 3 * 8 * 8);
            assert_ne!(b.views[0], b.views[1], "two views must differ");
            seen.push((b.epoch, b.index));
        }
        assert_eq!(seen, vec![(0, 0), (0, 1), (1, 0), (1, 1)]);
    }

    #[test]
    fn batches_do_not_depend_on_the_worker_count() {
        let a = Loader::spawn(images(12, 8), config(1)).unwrap();
        let b = Loader::spawn(images(12, 8), config(3)).unwrap();
        for _ in 0..3 {
            assert_eq!(a.next().unwrap().views, b.next().unwrap().views);
        }
    }

    #[test]
    fn epochs_are_shuffled_differently() {
        assert_ne!(epoch_order(100, 1, 0), epoch_order(100, 1, 1));
        assert_eq!(epoch_order(100, 1, 0), epoch_order(100, 1, 0));
    }

    #[test]
    fn dropping_a_blocked_loader_returns_promptly() {
        let loader = Loader::spawn(
            images(64, 8),
            LoaderConfig {
                end_epoch: 1000,
                ..config(1)
            },
        )
        .unwrap();
        let _ = loader.next();
        let t = std::time::Instant::now();
        drop(loader);
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn too_few_images_is_a_data_error() {
        assert!(matches!(
            Loader::spawn(images(3, 8), config(1)),
            Err(TrainError::Data(_))
        ));
    }
}
