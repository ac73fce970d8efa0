//! SSL losses, each named after its maths.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};

/// Row-wise L2 normalisation, `x / max(||x||, 1e-12)` (PyTorch
/// `F.normalize`'s epsilon), so a zero vector stays zero instead of NaN.
///
/// # Shapes
/// `[n, d]` -> `[n, d]`
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12); // [n, 1]
    x / norm
}

/// NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et
/// al. 2020, eq. 1 and Algorithm 1).
///
/// Views `z_a[i]` and `z_b[i]` of image `i` are positives; the other `2n - 2`
/// views in the batch are negatives. With `z` the L2-normalised concatenation
/// `[z_a; z_b]` and `s = z z^T / temperature`, the loss averages
/// `-log(exp(s[i, pos(i)]) / sum_{k != i} exp(s[i, k]))` over all `2n` rows.
///
/// # Shapes
/// - `z_a`, `z_b`: `[n, d]`, `n >= 2`
/// - output: `[1]`
pub fn nt_xent<B: Backend>(z_a: Tensor<B, 2>, z_b: Tensor<B, 2>, temperature: f64) -> Tensor<B, 1> {
    let [n, _] = z_a.dims();
    let device = z_a.device();
    let z = l2_normalize(Tensor::cat(vec![z_a, z_b], 0)); // [2n, d]
    let logits = z.clone().matmul(z.transpose()) / temperature; // [2n, 2n]
                                                                // Exclude each view's similarity with itself (k != i). A large finite
                                                                // value, not -inf, keeps every backend's softmax and its gradient finite;
                                                                // exp(-1e9) is exactly 0 in f32.
    let self_mask = Tensor::<B, 2, Bool>::diag_mask([2 * n, 2 * n], 0, &device).bool_not(); // true on the diagonal
    let logits = logits.mask_fill(self_mask, -1.0e9);
    let log_prob = log_softmax(logits, 1); // [2n, 2n]
                                           // Row i's positive is i + n (first half) or i - n (second half).
    let positives = Tensor::<B, 1, Int>::arange(0..(2 * n) as i64, &device)
        .add_scalar(n as i64)
        .remainder_scalar((2 * n) as i64)
        .reshape([2 * n, 1]);
    log_prob.gather(1, positives).mean().neg() // [1]
}

/// Row-wise cosine similarity, each row L2-normalised with [`l2_normalize`]'s
/// epsilon.
///
/// # Shapes
/// `[n, d]`, `[n, d]` -> `[n]`
pub fn cosine_similarity<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 1> {
    let [n, _] = a.dims();
    (l2_normalize(a) * l2_normalize(b)).sum_dim(1).reshape([n])
}

/// SimSiam's negative cosine similarity `D(p, z) = -mean_i cos(p_i, z_i)`
/// (Chen & He 2021, eq. 1). The caller applies the stop-gradient to `z`.
///
/// # Shapes
/// - `p`, `z`: `[n, d]`
/// - output: `[1]`
pub fn negative_cosine<B: Backend>(p: Tensor<B, 2>, z: Tensor<B, 2>) -> Tensor<B, 1> {
    cosine_similarity(p, z).mean().neg()
}

/// BYOL's normalised mean squared error, `mean_i ||p_i/|p_i| - z_i/|z_i|||^2
/// = mean_i (2 - 2 cos(p_i, z_i))` (Grill et al. 2020, eq. 2). The caller
/// passes the target projection `z` without gradients.
///
/// # Shapes
/// - `p`, `z`: `[n, d]`
/// - output: `[1]`
pub fn normalized_mse<B: Backend>(p: Tensor<B, 2>, z: Tensor<B, 2>) -> Tensor<B, 1> {
    cosine_similarity(p, z)
        .mul_scalar(-2.0)
        .add_scalar(2.0)
        .mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, TensorData};

    /// Algorithm 1 of the SimCLR paper, literally: for every pair (2k-1, 2k)
    /// add l(2k-1, 2k) + l(2k, 2k-1), with l(i, j) = -log(exp(s_ij) /
    /// sum_{k != i} exp(s_ik)), then divide by 2N. Views are interleaved
    /// (a0, b0, a1, b1, ...) as in the paper's indexing.
    fn naive_nt_xent(a: &[Vec<f64>], b: &[Vec<f64>], t: f64) -> f64 {
        let norm = |v: &Vec<f64>| {
            let l = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.iter().map(|x| x / l).collect::<Vec<f64>>()
        };
        let mut z = Vec::new();
        for (x, y) in a.iter().zip(b) {
            z.push(norm(x));
            z.push(norm(y));
        }
        let sim = |i: usize, j: usize| z[i].iter().zip(&z[j]).map(|(p, q)| p * q).sum::<f64>() / t;
        let l = |i: usize, j: usize| {
            let denom: f64 = (0..z.len())
                .filter(|&k| k != i)
                .map(|k| sim(i, k).exp())
                .sum();
            -(sim(i, j).exp() / denom).ln()
        };
        let n = a.len();
        (0..n)
            .map(|k| l(2 * k, 2 * k + 1) + l(2 * k + 1, 2 * k))
            .sum::<f64>()
            / (2 * n) as f64
    }

    fn rows(t: &Tensor<Flex, 2>) -> Vec<Vec<f64>> {
        let [n, d] = t.dims();
        let v = t.to_data().to_vec::<f32>().unwrap();
        (0..n)
            .map(|i| {
                v[i * d..(i + 1) * d]
                    .iter()
                    .map(|&x| f64::from(x))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn matches_the_papers_pseudocode() {
        let device = Default::default();
        for (n, d, t) in [(2, 3, 0.5), (5, 8, 0.1), (7, 4, 1.0)] {
            let a = Tensor::<Flex, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &device);
            let b = Tensor::<Flex, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &device);
            let expected = naive_nt_xent(&rows(&a), &rows(&b), t);
            let got = f64::from(nt_xent(a, b, t).into_scalar());
            assert!(
                (got - expected).abs() < 1e-4,
                "n {n} d {d} t {t}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn identical_views_far_apart_give_a_low_loss() {
        // Two orthogonal images, each view equal to its pair: positives have
        // cosine 1, negatives 0; at t = 0.1 the loss is -log(e^10 / (e^10 + 2)).
        let device = Default::default();
        let a = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [2, 2]),
            &device,
        );
        let got = f64::from(nt_xent(a.clone(), a, 0.1).into_scalar());
        let expected = -(10f64.exp() / (10f64.exp() + 2.0)).ln();
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
    }

    fn naive_cosines(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<f64> {
        a.iter()
            .zip(b)
            .map(|(x, y)| {
                let dot: f64 = x.iter().zip(y).map(|(p, q)| p * q).sum();
                let nx = x.iter().map(|v| v * v).sum::<f64>().sqrt();
                let ny = y.iter().map(|v| v * v).sum::<f64>().sqrt();
                dot / (nx * ny)
            })
            .collect()
    }

    #[test]
    fn negative_cosine_and_normalized_mse_match_a_per_row_loop() {
        let device = Default::default();
        for (n, d) in [(1, 2), (5, 8), (9, 3)] {
            let p = Tensor::<Flex, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &device);
            let z = Tensor::<Flex, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &device);
            let cos = naive_cosines(&rows(&p), &rows(&z));
            let want_neg = -cos.iter().sum::<f64>() / n as f64;
            // BYOL: squared distance of the normalised rows, summed per row.
            let pn = rows(&p);
            let zn = rows(&z);
            let want_mse = pn
                .iter()
                .zip(&zn)
                .map(|(x, y)| {
                    let lx = x.iter().map(|v| v * v).sum::<f64>().sqrt();
                    let ly = y.iter().map(|v| v * v).sum::<f64>().sqrt();
                    x.iter()
                        .zip(y)
                        .map(|(a, b)| (a / lx - b / ly).powi(2))
                        .sum::<f64>()
                })
                .sum::<f64>()
                / n as f64;
            let got_neg = f64::from(negative_cosine(p.clone(), z.clone()).into_scalar());
            let got_mse = f64::from(normalized_mse(p, z).into_scalar());
            assert!((got_neg - want_neg).abs() < 1e-5, "{got_neg} vs {want_neg}");
            assert!((got_mse - want_mse).abs() < 1e-5, "{got_mse} vs {want_mse}");
        }
        // Aligned rows: -1 and 0; opposite rows: 1 and 4.
        let a = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![1.0f32, 2.0, -3.0, 0.5], [2, 2]),
            &device,
        );
        let neg = f64::from(negative_cosine(a.clone(), a.clone() * 3.0).into_scalar());
        assert!((neg + 1.0).abs() < 1e-6, "{neg}");
        let mse = f64::from(normalized_mse(a.clone(), a.neg()).into_scalar());
        assert!((mse - 4.0).abs() < 1e-5, "{mse}");
    }

    #[test]
    fn normalize_keeps_zero_rows_finite() {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![0.0f32, 0.0, 3.0, 4.0], [2, 2]),
            &device,
        );
        let v = l2_normalize(x).into_data().to_vec::<f32>().unwrap();
        assert_eq!(v, vec![0.0, 0.0, 0.6, 0.8]);
    }
}
