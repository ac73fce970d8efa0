//! Step-metric bookkeeping: throughput and data-wait accumulators, the collapse monitor, metric points.

use super::MetricPoint;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Metric keys the training loop emits.
pub mod keys {
    pub const LOSS: &str = "train/loss";
    pub const LR: &str = "train/lr";
    pub const IMAGES_PER_SEC: &str = "train/images_per_sec";
    pub const EMBEDDING_STD: &str = "train/embedding_std";
    /// lightly's collapse level, from the same embedding (see [`super::collapse_level`]).
    pub const COLLAPSE: &str = "train/collapse";
    pub const DATA_WAIT_FRAC: &str = "train/data_wait_frac";
    pub const KNN_TOP1: &str = "knn/top1";
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Collapse monitor of lightly's `std_of_l2_normalized` (used in its
/// benchmarks after Jing et al. 2022 and the SimSiam paper, Chen & He 2021,
/// section 4.1): L2-normalise each row, take the per-dimension standard
/// deviation over the batch (unbiased, as `torch.std`), average over
/// dimensions. A collapsed output gives 0; rows spread uniformly on the unit
/// sphere give about `1 / sqrt(dim)`.
///
/// `values` is `rows * dim` floats, row-major. Returns 0 for fewer than 2 rows.
pub fn embedding_std(values: &[f32], rows: usize, dim: usize) -> f64 {
    assert_eq!(values.len(), rows * dim, "values must be rows * dim");
    if rows < 2 || dim == 0 {
        return 0.0;
    }
    let mut normed = vec![0.0f64; rows * dim];
    for r in 0..rows {
        let row = &values[r * dim..(r + 1) * dim];
        // F.normalize's epsilon, so zero rows stay zero.
        let norm = row
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        for (o, &v) in normed[r * dim..(r + 1) * dim].iter_mut().zip(row) {
            *o = f64::from(v) / norm;
        }
    }
    let mut total = 0.0;
    for d in 0..dim {
        let mean = (0..rows).map(|r| normed[r * dim + d]).sum::<f64>() / rows as f64;
        let var = (0..rows)
            .map(|r| (normed[r * dim + d] - mean).powi(2))
            .sum::<f64>()
            / (rows - 1) as f64;
        total += var.sqrt();
    }
    total / dim as f64
}

/// lightly's collapse level (its SimSiam tutorial's `collapse_level`, after
/// the SimSiam paper's section 4.1 analysis): `max(0, 1 - sqrt(dim) * std)`
/// with `std` from [`embedding_std`]. 0 when the normalised rows spread like
/// uniform points on the sphere (std = 1 / sqrt(dim)), 1 when every row
/// points the same way (std = 0). lightly smooths `std` with an EMA over
/// steps; here it is the logging step's own value.
pub fn collapse_level(embedding_std: f64, dim: usize) -> f64 {
    (1.0 - (dim as f64).sqrt() * embedding_std).max(0.0)
}

/// Accumulates the steps between two logging points.
#[derive(Debug, Default, Clone)]
pub struct Interval {
    pub steps: usize,
    /// Images (not views) consumed.
    pub images: usize,
    pub loss_sum: f64,
    /// Time the training thread blocked on the loader.
    pub wait: Duration,
    /// Wall time of the steps themselves, waiting included; evaluation and
    /// checkpoint time between steps is excluded.
    pub busy: Duration,
}

impl Interval {
    pub fn add(&mut self, images: usize, loss: f64, wait: Duration, busy: Duration) {
        self.steps += 1;
        self.images += images;
        self.loss_sum += loss;
        self.wait += wait;
        self.busy += busy;
    }

    /// Mean loss over the interval's steps.
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.steps.max(1) as f64
    }

    pub fn images_per_sec(&self) -> f64 {
        let secs = self.busy.as_secs_f64();
        if secs > 0.0 {
            self.images as f64 / secs
        } else {
            0.0
        }
    }

    /// Share of step time spent waiting for data, in [0, 1].
    pub fn data_wait_frac(&self) -> f64 {
        let busy = self.busy.as_secs_f64();
        if busy > 0.0 {
            (self.wait.as_secs_f64() / busy).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

/// Builds metric points that share a step, epoch and wall time.
pub struct PointBatch {
    step: i64,
    epoch: i64,
    wall_time: f64,
    pub points: Vec<MetricPoint>,
}

impl PointBatch {
    pub fn new(step: usize, epoch: usize) -> Self {
        Self {
            step: step as i64,
            epoch: epoch as i64,
            wall_time: unix_now(),
            points: Vec::new(),
        }
    }

    pub fn push(&mut self, key: &str, value: f64) {
        self.points.push(MetricPoint {
            key: key.to_string(),
            step: self.step,
            epoch: self.epoch,
            value,
            wall_time: self.wall_time,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn collapsed_embeddings_have_zero_std() {
        // Every row the same direction (different lengths): fully collapsed.
        let rows: Vec<f32> = (0..8)
            .flat_map(|r| vec![1.0 + r as f32, 2.0 + 2.0 * r as f32, 0.0])
            .collect();
        assert!(embedding_std(&rows, 8, 3) < 1e-9);
    }

    #[test]
    fn spread_embeddings_are_near_one_over_sqrt_dim() {
        let (rows, dim) = (4096, 64);
        let mut rng = SmallRng::seed_from_u64(0);
        // Gaussian rows are uniform on the sphere once normalised (Box-Muller).
        let values: Vec<f32> = (0..rows * dim)
            .map(|_| {
                let (u1, u2): (f32, f32) = (rng.random::<f32>().max(1e-7), rng.random());
                (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
            })
            .collect();
        let std = embedding_std(&values, rows, dim);
        let expected = 1.0 / (dim as f64).sqrt();
        assert!(
            (std - expected).abs() < 0.01 * expected * 5.0,
            "{std} vs {expected}"
        );
    }

    #[test]
    fn hand_computed_case() {
        // Rows (1, 0) and (0, 1): per-dim values {1, 0}, unbiased std sqrt(0.5).
        let std = embedding_std(&[1.0, 0.0, 0.0, 1.0], 2, 2);
        assert!((std - 0.5f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn collapse_level_is_near_zero_when_spread_and_one_when_collapsed() {
        let (rows, dim) = (2048, 32);
        let mut rng = SmallRng::seed_from_u64(1);
        let values: Vec<f32> = (0..rows * dim)
            .map(|_| {
                let (u1, u2): (f32, f32) = (rng.random::<f32>().max(1e-7), rng.random());
                (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
            })
            .collect();
        let healthy = collapse_level(embedding_std(&values, rows, dim), dim);
        assert!(healthy < 0.05, "{healthy}");
        // Identical rows.
        let same: Vec<f32> = (0..rows).flat_map(|_| values[..dim].to_vec()).collect();
        let collapsed = collapse_level(embedding_std(&same, rows, dim), dim);
        assert!(collapsed > 0.99, "{collapsed}");
        assert_eq!(collapse_level(0.5, 16), 0.0, "clamped at 0");
    }

    #[test]
    fn interval_rates() {
        let mut i = Interval::default();
        i.add(100, 2.0, Duration::from_millis(250), Duration::from_secs(1));
        i.add(100, 4.0, Duration::from_millis(250), Duration::from_secs(1));
        assert_eq!(i.mean_loss(), 3.0);
        assert!((i.images_per_sec() - 100.0).abs() < 1e-9);
        assert!((i.data_wait_frac() - 0.25).abs() < 1e-9);
    }
}
