//! SimCLR-style image augmentations on in-memory `u8` HWC images, written from torchvision's definitions.
//!
//! Burn has no augmentation library, so the ops below re-implement the
//! torchvision transforms that SimCLR's CIFAR-10 recipe uses (Chen et al. 2020,
//! Appendix A and B.9; lightly's `SimCLRTransform`), with the same parameter
//! sampling, so published hyper-parameters carry over.

use rand::seq::SliceRandom;
use rand::Rng;

/// Per-channel mean of the CIFAR-10 training set (RGB, pixel values in
/// [0, 1]); the values solo-learn's and most CIFAR pipelines normalise with.
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// Per-channel standard deviation of the CIFAR-10 training set over all
/// pixels (solo-learn's `cifar` pipeline; not the often-copied
/// `0.2023, 0.1994, 0.2010`, which is a mean of per-image stds).
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// ITU-R 601-2 luma weights, as torchvision's `rgb_to_grayscale` uses.
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// torchvision `RandomResizedCrop` parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResizedCrop {
    /// Range of the crop's area as a fraction of the image's.
    pub scale: (f32, f32),
    /// Range of the crop's aspect ratio (width / height), sampled log-uniformly.
    pub ratio: (f32, f32),
}

/// torchvision `ColorJitter` strengths; each factor is drawn from
/// `[max(0, 1 - s), 1 + s]` (hue: `[-hue, hue]`), and the four ops run in a
/// random order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColorJitter {
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    /// Hue shift as a fraction of the colour wheel, at most 0.5.
    pub hue: f32,
}

/// One view's augmentation recipe. Ops run in SimCLR's order: crop, flip,
/// colour jitter, grayscale, then normalisation.
#[derive(Debug, Clone, PartialEq)]
pub struct AugmentParams {
    /// `None` keeps the whole image.
    pub crop: Option<ResizedCrop>,
    /// Probability of a horizontal flip.
    pub hflip_prob: f32,
    pub jitter: ColorJitter,
    /// Probability that the colour jitter is applied at all (`RandomApply`).
    pub jitter_prob: f32,
    /// Probability of converting to 3-channel grayscale.
    pub grayscale_prob: f32,
    /// Per-channel mean and std used to normalise the [0, 1] image.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl AugmentParams {
    /// SimCLR's CIFAR-10 views: RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3;
    /// torchvision's defaults, SimCLR Appendix A), flip p 0.5, colour jitter
    /// with strength s = 0.5 (SimCLR Appendix B.9 for CIFAR-10: 0.8s for
    /// brightness, contrast and saturation, 0.2s for hue; lightly's CIFAR-10
    /// benchmark uses `cj_strength=0.5` likewise) applied with p 0.8, grayscale
    /// p 0.2, no Gaussian blur (dropped for 32x32 images, SimCLR B.9).
    pub fn simclr_cifar10() -> Self {
        Self {
            crop: Some(ResizedCrop {
                scale: (0.08, 1.0),
                ratio: (3.0 / 4.0, 4.0 / 3.0),
            }),
            hflip_prob: 0.5,
            jitter: ColorJitter {
                brightness: 0.4,
                contrast: 0.4,
                saturation: 0.4,
                hue: 0.1,
            },
            jitter_prob: 0.8,
            grayscale_prob: 0.2,
            mean: CIFAR10_MEAN,
            std: CIFAR10_STD,
        }
    }

    /// No augmentation: normalisation only (evaluation and kNN features).
    pub fn identity() -> Self {
        Self {
            crop: None,
            hflip_prob: 0.0,
            jitter: ColorJitter {
                brightness: 0.0,
                contrast: 0.0,
                saturation: 0.0,
                hue: 0.0,
            },
            jitter_prob: 0.0,
            grayscale_prob: 0.0,
            mean: CIFAR10_MEAN,
            std: CIFAR10_STD,
        }
    }
}

/// Augments one square RGB image and writes it normalised, channel-first.
///
/// `src` is `size * size * 3` bytes, row-major HWC. `out` receives
/// `3 * size * size` floats, CHW, same side length (the crop is resized back).
///
/// # Panics
/// If the buffer lengths do not match `size`; callers own both buffers.
pub fn augment_into<R: Rng + ?Sized>(
    src: &[u8],
    size: usize,
    params: &AugmentParams,
    rng: &mut R,
    out: &mut [f32],
) {
    let n = size * size;
    assert_eq!(src.len(), n * 3, "source must be size*size*3 bytes");
    assert_eq!(out.len(), n * 3, "output must be 3*size*size floats");

    // Working image: HWC floats in [0, 1].
    let mut img: Vec<f32> = match params.crop {
        Some(crop) => {
            let (top, left, h, w) = sample_crop(size, size, crop, rng);
            resize_bilinear(src, size, (top, left, h, w), size)
        }
        None => src.iter().map(|&v| f32::from(v) / 255.0).collect(),
    };

    if params.hflip_prob > 0.0 && rng.random::<f32>() < params.hflip_prob {
        flip_horizontal(&mut img, size);
    }
    if params.jitter_prob > 0.0 && rng.random::<f32>() < params.jitter_prob {
        color_jitter(&mut img, params.jitter, rng);
    }
    if params.grayscale_prob > 0.0 && rng.random::<f32>() < params.grayscale_prob {
        to_grayscale(&mut img);
    }

    for c in 0..3 {
        let (mean, inv_std) = (params.mean[c], 1.0 / params.std[c]);
        let plane = &mut out[c * n..(c + 1) * n];
        for (p, o) in plane.iter_mut().enumerate() {
            *o = (img[p * 3 + c] - mean) * inv_std;
        }
    }
}

/// Normalises one image without augmentation (`augment_into` with
/// [`AugmentParams::identity`], which draws no random numbers).
pub fn normalize_into(src: &[u8], size: usize, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    let n = size * size;
    assert_eq!(src.len(), n * 3, "source must be size*size*3 bytes");
    assert_eq!(out.len(), n * 3, "output must be 3*size*size floats");
    for c in 0..3 {
        let inv_std = 1.0 / std[c];
        for p in 0..n {
            out[c * n + p] = (f32::from(src[p * 3 + c]) / 255.0 - mean[c]) * inv_std;
        }
    }
}

/// torchvision `RandomResizedCrop.get_params`: up to 10 tries of a random
/// area and log-uniform aspect ratio, then a centred crop with the ratio
/// clamped into range. Returns `(top, left, height, width)`.
fn sample_crop<R: Rng + ?Sized>(
    height: usize,
    width: usize,
    crop: ResizedCrop,
    rng: &mut R,
) -> (usize, usize, usize, usize) {
    let area = (height * width) as f32;
    let (log_lo, log_hi) = (crop.ratio.0.ln(), crop.ratio.1.ln());
    // 10 attempts: torchvision's constant.
    for _ in 0..10 {
        let target_area = area * uniform(rng, crop.scale.0, crop.scale.1);
        let aspect = uniform(rng, log_lo, log_hi).exp();
        let w = (target_area * aspect).sqrt().round() as usize;
        let h = (target_area / aspect).sqrt().round() as usize;
        if w > 0 && h > 0 && w <= width && h <= height {
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return (top, left, h, w);
        }
    }
    // Fallback: central crop.
    let in_ratio = width as f32 / height as f32;
    let (w, h) = if in_ratio < crop.ratio.0 {
        (
            width,
            ((width as f32 / crop.ratio.0).round() as usize).clamp(1, height),
        )
    } else if in_ratio > crop.ratio.1 {
        (
            ((height as f32 * crop.ratio.1).round() as usize).clamp(1, width),
            height,
        )
    } else {
        (width, height)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

fn uniform<R: Rng + ?Sized>(rng: &mut R, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.random::<f32>()
}

/// Bilinear resize of the crop `(top, left, h, w)` of a `u8` HWC image to
/// `out_size` squared, with half-pixel centres (`align_corners=False`, as
/// torchvision's `resize`). Returns HWC floats in [0, 1].
fn resize_bilinear(
    src: &[u8],
    src_w: usize,
    (top, left, h, w): (usize, usize, usize, usize),
    out_size: usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; out_size * out_size * 3];
    let scale_y = h as f32 / out_size as f32;
    let scale_x = w as f32 / out_size as f32;
    // Precompute the x taps once per row pass.
    let taps_x: Vec<(usize, usize, f32)> =
        (0..out_size).map(|x| source_taps(x, scale_x, w)).collect();
    for y in 0..out_size {
        let (y0, y1, fy) = source_taps(y, scale_y, h);
        let row0 = (top + y0) * src_w;
        let row1 = (top + y1) * src_w;
        for (x, &(x0, x1, fx)) in taps_x.iter().enumerate() {
            let (c0, c1) = (left + x0, left + x1);
            for c in 0..3 {
                let p00 = f32::from(src[(row0 + c0) * 3 + c]);
                let p01 = f32::from(src[(row0 + c1) * 3 + c]);
                let p10 = f32::from(src[(row1 + c0) * 3 + c]);
                let p11 = f32::from(src[(row1 + c1) * 3 + c]);
                let top_row = p00 + (p01 - p00) * fx;
                let bottom_row = p10 + (p11 - p10) * fx;
                out[(y * out_size + x) * 3 + c] = (top_row + (bottom_row - top_row) * fy) / 255.0;
            }
        }
    }
    out
}

/// For output index `i`, the two source indices (within `0..len`) and the
/// weight of the second one.
fn source_taps(i: usize, scale: f32, len: usize) -> (usize, usize, f32) {
    let s = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
    let i0 = (s.floor() as usize).min(len - 1);
    let i1 = (i0 + 1).min(len - 1);
    (i0, i1, s - i0 as f32)
}

fn flip_horizontal(img: &mut [f32], size: usize) {
    for row in img.chunks_exact_mut(size * 3) {
        for x in 0..size / 2 {
            let (a, b) = (x * 3, (size - 1 - x) * 3);
            for c in 0..3 {
                row.swap(a + c, b + c);
            }
        }
    }
}

fn luma(p: &[f32]) -> f32 {
    LUMA[0] * p[0] + LUMA[1] * p[1] + LUMA[2] * p[2]
}

fn to_grayscale(img: &mut [f32]) {
    for p in img.chunks_exact_mut(3) {
        let l = luma(p);
        p.fill(l);
    }
}

/// torchvision `ColorJitter`: sample the four factors, then apply the ops in
/// a random permutation (`torch.randperm(4)`).
fn color_jitter<R: Rng + ?Sized>(img: &mut [f32], jitter: ColorJitter, rng: &mut R) {
    let factor = |rng: &mut R, s: f32| uniform(rng, (1.0 - s).max(0.0), 1.0 + s);
    let mut order = [0u8, 1, 2, 3];
    order.shuffle(rng);
    let brightness = factor(rng, jitter.brightness);
    let contrast = factor(rng, jitter.contrast);
    let saturation = factor(rng, jitter.saturation);
    let hue = uniform(rng, -jitter.hue, jitter.hue);
    for op in order {
        match op {
            0 if jitter.brightness > 0.0 => {
                for v in img.iter_mut() {
                    *v = (*v * brightness).clamp(0.0, 1.0);
                }
            }
            1 if jitter.contrast > 0.0 => {
                // Blend towards the mean grey level of the whole image.
                let pixels = (img.len() / 3) as f32;
                let mean = img.chunks_exact(3).map(luma).sum::<f32>() / pixels;
                for v in img.iter_mut() {
                    *v = (contrast * *v + (1.0 - contrast) * mean).clamp(0.0, 1.0);
                }
            }
            2 if jitter.saturation > 0.0 => {
                for p in img.chunks_exact_mut(3) {
                    let l = luma(p);
                    for v in p.iter_mut() {
                        *v = (saturation * *v + (1.0 - saturation) * l).clamp(0.0, 1.0);
                    }
                }
            }
            3 if jitter.hue > 0.0 => {
                for p in img.chunks_exact_mut(3) {
                    let (h, s, v) = rgb_to_hsv(p[0], p[1], p[2]);
                    let (r, g, b) = hsv_to_rgb((h + hue).rem_euclid(1.0), s, v);
                    p[0] = r;
                    p[1] = g;
                    p[2] = b;
                }
            }
            _ => {}
        }
    }
}

/// RGB in [0, 1] to HSV with hue in [0, 1) (torchvision `_rgb2hsv`).
fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    let s = if max > 0.0 { delta / max } else { 0.0 };
    if delta <= 0.0 {
        return (0.0, s, max);
    }
    let h = if max == r {
        ((g - b) / delta).rem_euclid(6.0)
    } else if max == g {
        (b - r) / delta + 2.0
    } else {
        (r - g) / delta + 4.0
    };
    ((h / 6.0).rem_euclid(1.0), s, max)
}

/// Inverse of [`rgb_to_hsv`] (torchvision `_hsv2rgb`).
fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h * 6.0;
    let sector = h6.floor();
    let f = h6 - sector;
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    match (sector as i32).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    const SIZE: usize = 16;

    /// A gradient image with distinct left/right halves, so flips and crops show.
    fn test_image() -> Vec<u8> {
        let mut img = vec![0u8; SIZE * SIZE * 3];
        for y in 0..SIZE {
            for x in 0..SIZE {
                let i = (y * SIZE + x) * 3;
                img[i] = (x * 255 / (SIZE - 1)) as u8;
                img[i + 1] = (y * 255 / (SIZE - 1)) as u8;
                img[i + 2] = if x < SIZE / 2 { 30 } else { 220 };
            }
        }
        img
    }

    fn run(params: &AugmentParams, seed: u64) -> Vec<f32> {
        let mut out = vec![0.0; 3 * SIZE * SIZE];
        augment_into(
            &test_image(),
            SIZE,
            params,
            &mut SmallRng::seed_from_u64(seed),
            &mut out,
        );
        out
    }

    fn plain() -> Vec<f32> {
        let mut out = vec![0.0; 3 * SIZE * SIZE];
        normalize_into(&test_image(), SIZE, CIFAR10_MEAN, CIFAR10_STD, &mut out);
        out
    }

    #[test]
    fn simclr_views_have_the_right_shape_and_are_finite() {
        for seed in 0..50 {
            let out = run(&AugmentParams::simclr_cifar10(), seed);
            assert_eq!(out.len(), 3 * SIZE * SIZE);
            assert!(out.iter().all(|v| v.is_finite()), "seed {seed}");
            // Normalised [0, 1] values stay within (0 - mean) / std .. (1 - mean) / std.
            assert!(out.iter().all(|v| (-2.1..=2.2).contains(v)), "seed {seed}");
        }
    }

    #[test]
    fn identity_matches_plain_normalisation() {
        assert_eq!(run(&AugmentParams::identity(), 7), plain());
    }

    #[test]
    fn flip_mirrors_the_image() {
        let params = AugmentParams {
            hflip_prob: 1.0,
            ..AugmentParams::identity()
        };
        let flipped = run(&params, 0);
        let base = plain();
        assert_ne!(flipped, base);
        let n = SIZE * SIZE;
        for c in 0..3 {
            for y in 0..SIZE {
                for x in 0..SIZE {
                    assert_eq!(
                        flipped[c * n + y * SIZE + x],
                        base[c * n + y * SIZE + (SIZE - 1 - x)]
                    );
                }
            }
        }
    }

    #[test]
    fn crop_changes_the_image_and_full_crop_does_not() {
        let small = AugmentParams {
            crop: Some(ResizedCrop {
                scale: (0.1, 0.2),
                ratio: (1.0, 1.0),
            }),
            ..AugmentParams::identity()
        };
        let cropped = run(&small, 3);
        let diff: f32 = cropped
            .iter()
            .zip(plain())
            .map(|(a, b)| (a - b).abs())
            .sum();
        assert!(
            diff > 1.0,
            "a 10-20% crop should change the image, diff {diff}"
        );

        // A full-area, square crop of a square image is the identity resize.
        let full = AugmentParams {
            crop: Some(ResizedCrop {
                scale: (1.0, 1.0),
                ratio: (1.0, 1.0),
            }),
            ..AugmentParams::identity()
        };
        let same = run(&full, 3);
        for (a, b) in same.iter().zip(plain()) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn deterministic_under_a_seed() {
        let p = AugmentParams::simclr_cifar10();
        assert_eq!(run(&p, 42), run(&p, 42));
        assert_ne!(run(&p, 42), run(&p, 43));
    }

    #[test]
    fn grayscale_makes_channels_equal_before_normalisation() {
        let params = AugmentParams {
            grayscale_prob: 1.0,
            ..AugmentParams::identity()
        };
        let out = run(&params, 0);
        let n = SIZE * SIZE;
        for p in 0..n {
            let r = out[p] * CIFAR10_STD[0] + CIFAR10_MEAN[0];
            let g = out[n + p] * CIFAR10_STD[1] + CIFAR10_MEAN[1];
            let b = out[2 * n + p] * CIFAR10_STD[2] + CIFAR10_MEAN[2];
            assert!((r - g).abs() < 1e-5 && (g - b).abs() < 1e-5);
        }
    }

    #[test]
    fn hsv_round_trips() {
        for &(r, g, b) in &[
            (0.2, 0.5, 0.9),
            (1.0, 0.0, 0.0),
            (0.3, 0.3, 0.3),
            (0.9, 0.8, 0.1),
        ] {
            let (h, s, v) = rgb_to_hsv(r, g, b);
            let (r2, g2, b2) = hsv_to_rgb(h, s, v);
            assert!((r - r2).abs() < 1e-5 && (g - g2).abs() < 1e-5 && (b - b2).abs() < 1e-5);
        }
    }
}
