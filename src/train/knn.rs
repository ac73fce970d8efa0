//! Weighted k-nearest-neighbour monitor (Wu et al. 2018) on frozen backbone features.

use super::augment::{normalize_into, AugmentParams};
use super::data::ImageSet;
use super::resnet::ResNet;
use super::{Halt, TrainError};
use crate::methods::losses::l2_normalize;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// Queries scored per similarity block: a `[256, bank]` f32 block is 51 MB
/// for a 50,000-image bank, small on any device.
const QUERY_CHUNK: usize = 256;

/// L2-normalised backbone features of every image, in order.
///
/// Pass an evaluation-mode backbone (`model.backbone().valid()`), so that
/// BatchNorm uses its running statistics. Images are only normalised, not
/// augmented.
///
/// # Shapes
/// output: `[images.len(), feat_dim]`
pub fn extract_features<B: Backend>(
    backbone: &ResNet<B>,
    images: &ImageSet,
    batch_size: usize,
    device: &B::Device,
    cancel: &AtomicBool,
) -> Result<Tensor<B, 2>, Halt> {
    let size = images.size;
    let per_image = 3 * size * size;
    let params = AugmentParams::identity();
    let mut chunks = Vec::new();
    for start in (0..images.len()).step_by(batch_size.max(1)) {
        if cancel.load(Ordering::Relaxed) {
            return Err(Halt::Cancelled);
        }
        let n = batch_size.min(images.len() - start);
        let mut host = vec![0.0f32; n * per_image];
        host.par_chunks_mut(per_image)
            .enumerate()
            .for_each(|(i, out)| {
                normalize_into(images.image(start + i), size, params.mean, params.std, out);
            });
        let x = Tensor::<B, 4>::from_data(TensorData::new(host, [n, 3, size, size]), device);
        chunks.push(l2_normalize(backbone.forward(x)));
    }
    if chunks.is_empty() {
        return Err(TrainError::Data("no images to extract features from".into()).into());
    }
    Ok(Tensor::cat(chunks, 0))
}

/// Parameters of the weighted kNN vote.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnnParams {
    /// Neighbours that vote (capped at the bank size).
    pub k: usize,
    /// Softmax temperature of the votes, `exp(sim / temperature)`.
    pub temperature: f64,
    /// Labels are `0..num_classes`.
    pub num_classes: usize,
}

/// Top-1 accuracy in [0, 1] of weighted kNN classification of `queries`
/// against `bank` (Wu et al. 2018, "Unsupervised Feature Learning via
/// Non-Parametric Instance Discrimination", section 3.4; the `knn_predict` of
/// lightly and solo-learn). Both are L2-normalised `[n, d]` features, so the
/// dot product is the cosine similarity.
pub fn knn_top1<B: Backend>(
    bank: Tensor<B, 2>,
    bank_labels: &[u32],
    queries: Tensor<B, 2>,
    query_labels: &[u32],
    params: KnnParams,
    cancel: &AtomicBool,
) -> Result<f64, Halt> {
    let [bank_n, _] = bank.dims();
    let [query_n, _] = queries.dims();
    assert_eq!(bank_n, bank_labels.len(), "one label per bank row");
    assert_eq!(query_n, query_labels.len(), "one label per query row");
    if query_n == 0 || bank_n == 0 {
        return Ok(0.0);
    }
    let bank_t = bank.transpose(); // [d, bank]
    let mut correct = 0usize;
    for start in (0..query_n).step_by(QUERY_CHUNK) {
        if cancel.load(Ordering::Relaxed) {
            return Err(Halt::Cancelled);
        }
        let n = QUERY_CHUNK.min(query_n - start);
        let sims = queries.clone().narrow(0, start, n).matmul(bank_t.clone()); // [n, bank]
        let sims = sims
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| TrainError::Other(format!("reading kNN similarities: {e:?}")))?;
        correct += sims
            .par_chunks(bank_n)
            .zip(&query_labels[start..start + n])
            .filter(|(row, &label)| {
                weighted_knn_predict(
                    row,
                    bank_labels,
                    params.num_classes,
                    params.k,
                    params.temperature,
                ) == label
            })
            .count();
    }
    Ok(correct as f64 / query_n as f64)
}

/// Class predicted for one query from its similarities to every bank item:
/// each of the `k` most similar items votes for its class with weight
/// `exp(sim / temperature)`; the class with the largest total wins (ties go
/// to the lower class index).
pub fn weighted_knn_predict(
    sims: &[f32],
    bank_labels: &[u32],
    num_classes: usize,
    k: usize,
    temperature: f64,
) -> u32 {
    let k = k.min(sims.len());
    if k == 0 {
        return 0;
    }
    let mut idx: Vec<u32> = (0..sims.len() as u32).collect();
    // Descending similarity; `total_cmp` gives NaN a fixed place instead of panicking.
    let by_sim = |a: &u32, b: &u32| sims[*b as usize].total_cmp(&sims[*a as usize]);
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, by_sim);
    }
    let mut votes = vec![0.0f64; num_classes.max(1)];
    for &i in &idx[..k] {
        let label = bank_labels[i as usize] as usize;
        if label < votes.len() {
            votes[label] += (f64::from(sims[i as usize]) / temperature).exp();
        }
    }
    let mut best = 0;
    for (c, &v) in votes.iter().enumerate() {
        if v > votes[best] {
            best = c;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn hand_computed_weighted_vote() {
        // Similarities to 5 bank items with labels [0, 1, 1, 0, 2], k = 3, t = 0.5.
        // Top 3: item0 (0.9, class 0), item1 (0.8, class 1), item2 (0.7, class 1).
        // Class 0: e^1.8 = 6.05; class 1: e^1.6 + e^1.4 = 4.95 + 4.06 = 9.01 -> class 1,
        // although the single nearest neighbour is class 0.
        let sims = [0.9, 0.8, 0.7, 0.1, 0.6];
        let labels = [0, 1, 1, 0, 2];
        assert_eq!(weighted_knn_predict(&sims, &labels, 3, 3, 0.5), 1);
        // k = 1: nearest neighbour only.
        assert_eq!(weighted_knn_predict(&sims, &labels, 3, 1, 0.5), 0);
        // A very low temperature makes the nearest neighbour dominate the sum:
        // e^(0.9/0.01) outweighs e^(0.8/0.01) + e^(0.7/0.01).
        assert_eq!(weighted_knn_predict(&sims, &labels, 3, 3, 0.01), 0);
        // k larger than the bank uses the whole bank.
        assert_eq!(weighted_knn_predict(&sims, &labels, 3, 50, 0.5), 1);
    }

    #[test]
    fn top1_on_hand_made_vectors() {
        let device = Default::default();
        let t = |v: Vec<f32>, n: usize| {
            Tensor::<Flex, 2>::from_data(TensorData::new(v, [n, 2]), &device)
        };
        // Unit vectors. Bank: (1,0) c0, (0.8,0.6) c1, (0.6,0.8) c1, (0,1) c0.
        let bank = t(vec![1.0, 0.0, 0.8, 0.6, 0.6, 0.8, 0.0, 1.0], 4);
        let bank_labels = [0, 1, 1, 0];
        // Queries (label): q1 (1,0) c0, q2 (0,1) c1, q3 (0.8,0.6) c1, q4 (0.28,0.96) c1.
        let queries = t(vec![1.0, 0.0, 0.0, 1.0, 0.8, 0.6, 0.28, 0.96], 4);
        let query_labels = [0, 1, 1, 1];
        let cancel = AtomicBool::new(false);
        let top1 = |k: usize, temp: f64| {
            knn_top1(
                bank.clone(),
                &bank_labels,
                queries.clone(),
                &query_labels,
                KnnParams {
                    k,
                    temperature: temp,
                    num_classes: 2,
                },
                &cancel,
            )
            .map_err(|_| "knn")
            .unwrap()
        };
        // k = 1: nearest items are (1,0) c0, (0,1) c0, (0.8,0.6) c1, (0,1) c0
        // -> q1 and q3 right: 2 of 4.
        assert!((top1(1, 0.1) - 0.5).abs() < 1e-9);
        // k = 3, t = 1: q1 top-3 sims 1.0 (c0), 0.8, 0.6 (c1): e^1 = 2.72 < e^0.8 + e^0.6
        // = 4.05 -> c1, wrong. q2: e^1 = 2.72 (c0) < e^0.8 + e^0.6 -> c1, right.
        // q3: sims 1.0, 0.96 (c1), 0.8 (c0) -> c1, right. q4: sims 0.96 (c0),
        // 0.936, 0.8 (c1): e^0.96 = 2.61 < e^0.936 + e^0.8 = 4.78 -> c1, right. 3 of 4.
        assert!((top1(3, 1.0) - 0.75).abs() < 1e-9);
    }

    #[test]
    fn cancel_stops_the_query_loop() {
        let device = Default::default();
        let bank =
            Tensor::<Flex, 2>::from_data(TensorData::new(vec![1.0f32, 0.0], [1, 2]), &device);
        let cancel = AtomicBool::new(true);
        assert!(matches!(
            knn_top1(
                bank.clone(),
                &[0],
                bank,
                &[0],
                KnnParams {
                    k: 1,
                    temperature: 0.1,
                    num_classes: 1
                },
                &cancel
            ),
            Err(Halt::Cancelled)
        ));
    }
}
