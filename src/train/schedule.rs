//! Learning-rate schedule: linear warm-up, then cosine decay to zero.

use std::f64::consts::PI;

/// Per-step learning rate for SGD.
///
/// The peak is `base_lr * batch_size / 256`, the linear scaling rule of Goyal et
/// al. 2017 ("Accurate, Large Minibatch SGD") that SimCLR (Chen et al. 2020,
/// Appendix B.1) also uses. The first `warmup_steps` steps ramp linearly up to
/// the peak (SimCLR: 10 warm-up epochs); the remaining steps follow a
/// half-cosine from the peak to 0 without restarts (Loshchilov & Hutter 2017,
/// SGDR), as in lightly's and solo-learn's `LinearWarmupCosineAnnealing`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Peak learning rate, already scaled by the batch size.
    pub peak: f64,
    /// Optimiser steps of linear warm-up (may be 0).
    pub warmup_steps: usize,
    /// Total optimiser steps of the run (> 0).
    pub total_steps: usize,
}

impl LrSchedule {
    /// Builds the schedule from the config's base rate (per 256 images).
    pub fn new(base_lr: f64, batch_size: usize, warmup_steps: usize, total_steps: usize) -> Self {
        // Linear scaling rule: the base rate is quoted for a batch of 256.
        let peak = base_lr * batch_size as f64 / 256.0;
        Self {
            peak,
            warmup_steps: warmup_steps.min(total_steps),
            total_steps: total_steps.max(1),
        }
    }

    /// Learning rate for optimiser step `step` (0-based: the rate used by the
    /// `step + 1`-th update). Steps past the end get 0.
    pub fn lr(&self, step: usize) -> f64 {
        if step >= self.total_steps {
            return 0.0;
        }
        if step < self.warmup_steps {
            // (step + 1) so the very first update is not wasted at lr 0 and the
            // last warm-up step reaches the peak exactly.
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = (self.total_steps - self.warmup_steps) as f64;
        let progress = (step - self.warmup_steps) as f64 / decay_steps;
        self.peak * 0.5 * (1.0 + (PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_is_scaled_by_batch_size() {
        let s = LrSchedule::new(0.12, 128, 0, 10);
        assert!((s.peak - 0.06).abs() < 1e-12);
    }

    #[test]
    fn warmup_ramps_linearly_to_the_peak() {
        let s = LrSchedule::new(0.256, 256, 10, 100);
        for step in 0..10 {
            let expected = 0.256 * (step + 1) as f64 / 10.0;
            assert!(
                (s.lr(step) - expected).abs() < 1e-12,
                "step {step}: {}",
                s.lr(step)
            );
        }
        // Equal increments: linear.
        let d1 = s.lr(1) - s.lr(0);
        let d2 = s.lr(8) - s.lr(7);
        assert!((d1 - d2).abs() < 1e-12);
        // Peak at the end of warm-up and on the first decay step.
        assert!((s.lr(9) - 0.256).abs() < 1e-12);
        assert!((s.lr(10) - 0.256).abs() < 1e-12);
    }

    #[test]
    fn cosine_decays_monotonically_to_about_zero() {
        let s = LrSchedule::new(0.1, 256, 5, 1000);
        let mut prev = f64::INFINITY;
        for step in 5..1000 {
            let lr = s.lr(step);
            assert!(lr <= prev + 1e-15, "not monotone at {step}");
            prev = lr;
        }
        // Half-way through the decay the rate is half the peak.
        let mid = 5 + (1000 - 5) / 2;
        assert!((s.lr(mid) - 0.05).abs() < 1e-3, "{}", s.lr(mid));
        assert!(s.lr(999) < 1e-6, "{}", s.lr(999));
        assert_eq!(s.lr(1000), 0.0);
    }

    #[test]
    fn no_warmup_starts_at_peak() {
        let s = LrSchedule::new(0.1, 256, 0, 4);
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
    }
}
