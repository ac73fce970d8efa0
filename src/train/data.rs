//! Loads an image-folder dataset (`<split>/<class>/<file>`) into memory as square RGB `u8` images.

use super::archive;
use super::{Halt, TrainError};
use crate::config::DataConfig;
use image::imageops::FilterType;
use image::{ImageFormat, RgbImage};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Decoded images of one split, all `size x size` RGB.
#[derive(Debug, Clone)]
pub struct ImageSet {
    /// Side length in pixels.
    pub size: usize,
    /// `len() * size * size * 3` bytes; image `i` is HWC at `i * size*size*3`.
    pub pixels: Vec<u8>,
    /// Class index of each image, into `classes`.
    pub labels: Vec<u32>,
    /// Class names, sorted; shared by both splits.
    pub classes: Vec<String>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes of one image per `size * size * 3`.
    pub fn image_bytes(&self) -> usize {
        self.size * self.size * 3
    }

    /// Image `i`, HWC.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_bytes();
        &self.pixels[i * n..(i + 1) * n]
    }
}

/// Both splits of a run's dataset.
#[derive(Debug, Clone)]
pub struct Datasets {
    /// Images the SSL method trains on (labels unused) and the kNN bank.
    pub train: ImageSet,
    /// kNN queries.
    pub test: ImageSet,
}

/// Resolves `config.path` (folder or `.tar.gz`), lists both splits, takes the
/// capped class-balanced subsets and decodes them in parallel.
pub fn load(
    config: &DataConfig,
    seed: u64,
    cache_dir: &Path,
    cancel: &AtomicBool,
) -> Result<Datasets, Halt> {
    let root = if archive::is_archive(&config.path) {
        archive::unpack_once(&config.path, cache_dir, cancel)?
    } else {
        if !config.path.exists() {
            return Err(
                TrainError::Data(format!("{} does not exist", config.path.display())).into(),
            );
        }
        if !config.path.is_dir() {
            return Err(TrainError::Data(format!(
                "{} is neither a folder nor a .tar.gz archive",
                config.path.display()
            ))
            .into());
        }
        config.path.clone()
    };
    let root = split_root(&root, &config.train_split);

    let train_dir = root.join(&config.train_split);
    let test_dir = root.join(&config.test_split);
    let train_files = list_split(&train_dir, None)?;
    let classes: Vec<String> = train_files.iter().map(|(c, _)| c.clone()).collect();
    let test_files = list_split(&test_dir, Some(&classes))?;

    let train_pick = balanced_subset(&train_files, config.max_train_images, seed);
    // A different stream for the test split so its choice does not mirror the train one.
    let test_pick = balanced_subset(&test_files, config.max_test_images, seed ^ 0x7e57_5eed);
    let train = decode_all(&train_pick, classes.clone(), config.image_size, cancel)?;
    let test = decode_all(&test_pick, classes, config.image_size, cancel)?;
    Ok(Datasets { train, test })
}

/// Descends through single-folder wrappers (`cifar10/` in `cifar10-jpg.tar.gz`)
/// until the folder holds the train split, at most a few levels.
fn split_root(root: &Path, train_split: &str) -> PathBuf {
    let mut dir = root.to_path_buf();
    // Four levels is plenty for archive wrappers and bounds the walk.
    for _ in 0..4 {
        if dir.join(train_split).is_dir() {
            break;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            break;
        };
        let visible: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        match visible.as_slice() {
            [only] if only.is_dir() => dir = only.clone(),
            _ => break,
        }
    }
    dir
}

/// Lists `<split>/<class>/<file>`: classes (visible sub-folders) sorted by name,
/// files sorted within each. Hidden entries are skipped; loose files next to
/// the class folders are ignored. With `known`, every class must be one of
/// them and the result is indexed like `known`.
fn list_split(
    dir: &Path,
    known: Option<&[String]>,
) -> Result<Vec<(String, Vec<PathBuf>)>, TrainError> {
    let read = |d: &Path| {
        fs::read_dir(d)
            .map_err(|e| TrainError::Data(format!("cannot read folder {}: {e}", d.display())))
    };
    let mut classes: Vec<(String, PathBuf)> = Vec::new();
    for entry in read(dir)? {
        let entry = entry
            .map_err(|e| TrainError::Data(format!("cannot read folder {}: {e}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        classes.push((name, entry.path()));
    }
    classes.sort();
    if classes.is_empty() {
        return Err(TrainError::Data(format!(
            "{} holds no class folders",
            dir.display()
        )));
    }

    let mut listed = Vec::with_capacity(classes.len());
    for (name, path) in classes {
        let mut files = Vec::new();
        for entry in read(&path)? {
            let entry = entry.map_err(|e| {
                TrainError::Data(format!("cannot read folder {}: {e}", path.display()))
            })?;
            if entry.file_name().to_string_lossy().starts_with('.') || entry.path().is_dir() {
                continue;
            }
            files.push(entry.path());
        }
        files.sort();
        listed.push((name, files));
    }

    if let Some(known) = known {
        let mut indexed: Vec<(String, Vec<PathBuf>)> =
            known.iter().map(|c| (c.clone(), Vec::new())).collect();
        for (name, files) in listed {
            let Some(i) = known.iter().position(|c| *c == name) else {
                return Err(TrainError::Data(format!(
                    "class folder {} has no counterpart in the training split",
                    dir.join(&name).display()
                )));
            };
            indexed[i].1 = files;
        }
        listed = indexed;
    }
    if listed.iter().all(|(_, f)| f.is_empty()) {
        return Err(TrainError::Data(format!(
            "{} holds no images",
            dir.display()
        )));
    }
    Ok(listed)
}

/// Picks at most `cap` files, spread as evenly as the classes allow (counts
/// differ by at most one unless a class runs out), chosen by a seeded shuffle
/// and returned in listing order. `None` keeps everything.
fn balanced_subset(
    classes: &[(String, Vec<PathBuf>)],
    cap: Option<usize>,
    seed: u64,
) -> Vec<(PathBuf, u32)> {
    let available: Vec<usize> = classes.iter().map(|(_, f)| f.len()).collect();
    let total: usize = available.iter().sum();
    let mut remaining = cap.unwrap_or(total).min(total);
    let mut quota = vec![0usize; classes.len()];
    while remaining > 0 {
        let open: Vec<usize> = (0..classes.len())
            .filter(|&c| quota[c] < available[c])
            .collect();
        let share = (remaining / open.len()).max(1);
        for c in open {
            let add = share.min(available[c] - quota[c]).min(remaining);
            quota[c] += add;
            remaining -= add;
            if remaining == 0 {
                break;
            }
        }
    }

    let mut picked = Vec::new();
    for (c, ((_, files), &q)) in classes.iter().zip(&quota).enumerate() {
        let mut idx: Vec<usize> = (0..files.len()).collect();
        if q < files.len() {
            let mut rng = SmallRng::seed_from_u64(
                seed.wrapping_add(c as u64)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            idx.shuffle(&mut rng);
            idx.truncate(q);
            idx.sort_unstable();
        }
        picked.extend(idx.into_iter().map(|i| (files[i].clone(), c as u32)));
    }
    picked
}

fn decode_all(
    files: &[(PathBuf, u32)],
    classes: Vec<String>,
    size: usize,
    cancel: &AtomicBool,
) -> Result<ImageSet, Halt> {
    let n = size * size * 3;
    let mut pixels = vec![0u8; files.len() * n];
    pixels
        .par_chunks_mut(n)
        .zip(files.par_iter())
        .try_for_each(|(out, (path, _))| {
            if cancel.load(Ordering::Relaxed) {
                return Err(Halt::Cancelled);
            }
            out.copy_from_slice(&decode_image(path, size)?);
            Ok(())
        })?;
    Ok(ImageSet {
        size,
        pixels,
        labels: files.iter().map(|(_, l)| *l).collect(),
        classes,
    })
}

/// Decodes one file into `size x size` RGB (HWC bytes). Grayscale and RGBA
/// are converted to RGB; other sizes are resized (shorter side to `size`,
/// bilinear) and centre-cropped, keeping the aspect ratio.
pub fn decode_image(path: &Path, size: usize) -> Result<Vec<u8>, TrainError> {
    let fail = |what: String| TrainError::Data(format!("{}: {what}", path.display()));
    let bytes = fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let format =
        image::guess_format(&bytes).map_err(|_| fail("not a JPEG or PNG image".to_string()))?;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(&bytes) {
        return Err(fail(
            "truncated JPEG (no end-of-image marker after the last scan)".to_string(),
        ));
    }
    let img = image::load_from_memory_with_format(&bytes, format)
        .map_err(|e| fail(format!("cannot decode: {e}")))?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    if w == 0 || h == 0 {
        return Err(fail("image has no pixels".to_string()));
    }
    let rgb = fit_square(rgb, size as u32);
    Ok(rgb.into_raw())
}

/// image 0.25 decodes JPEGs leniently (zune-jpeg `strict_mode(false)`), filling
/// a truncated scan with grey instead of failing, so check the structure
/// ourselves: the last start-of-scan marker (FF DA) must be followed by an
/// end-of-image marker (FF D9). Entropy-coded data byte-stuffs FF, so neither
/// marker can occur inside a scan, and an EXIF thumbnail's EOI sits before the
/// main image's scans.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |marker: u8| {
        bytes
            .windows(2)
            .rposition(|w| w[0] == 0xFF && w[1] == marker)
    };
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi > sos,
        _ => false,
    }
}

fn fit_square(img: RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == size && h == size {
        return img;
    }
    let scale = size as f64 / w.min(h) as f64;
    let nw = ((w as f64 * scale).round() as u32).max(size);
    let nh = ((h as f64 * scale).round() as u32).max(size);
    let resized = image::imageops::resize(&img, nw, nh, FilterType::Triangle);
    image::imageops::crop_imm(&resized, (nw - size) / 2, (nh - size) / 2, size, size).to_image()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb};

    /// Writes `<root>/<split>/<class>/<i>.<ext>` images whose colour encodes the class.
    pub(crate) fn write_folder(
        root: &Path,
        split: &str,
        classes: &[&str],
        per_class: usize,
        size: u32,
    ) {
        for (c, class) in classes.iter().enumerate() {
            let dir = root.join(split).join(class);
            fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class {
                let img = RgbImage::from_fn(size, size, |x, y| {
                    let base = (c * 80) as u8;
                    Rgb([
                        base,
                        base.wrapping_add((x * 7) as u8),
                        (y * 5 + i as u32) as u8,
                    ])
                });
                // Alternate formats so both decoders are exercised.
                let ext = if i % 2 == 0 { "png" } else { "jpg" };
                img.save(dir.join(format!("{i:04}.{ext}"))).unwrap();
            }
        }
    }

    fn config(path: &Path) -> DataConfig {
        DataConfig {
            path: path.to_path_buf(),
            train_split: "train".into(),
            test_split: "test".into(),
            max_train_images: None,
            max_test_images: None,
            image_size: 8,
            workers: 0,
        }
    }

    fn load_ok(cfg: &DataConfig, cache: &Path) -> Datasets {
        match load(cfg, 0, cache, &AtomicBool::new(false)) {
            Ok(d) => d,
            Err(Halt::Error(e)) => panic!("{e}"),
            Err(Halt::Cancelled) => panic!("cancelled"),
        }
    }

    fn load_err(cfg: &DataConfig, cache: &Path) -> String {
        match load(cfg, 0, cache, &AtomicBool::new(false)) {
            Err(Halt::Error(TrainError::Data(msg))) => msg,
            Err(Halt::Error(e)) => panic!("wrong error kind: {e}"),
            Err(Halt::Cancelled) => panic!("cancelled"),
            Ok(_) => panic!("expected an error"),
        }
    }

    #[test]
    fn image_folder_loads_with_sorted_classes_and_labels() {
        let tmp = tempfile::tempdir().unwrap();
        // Wrapped in a single top folder, as archives often are.
        let root = tmp.path().join("wrapper");
        write_folder(&root, "train", &["cat", "ant", "bee"], 3, 8);
        write_folder(&root, "test", &["ant", "cat", "bee"], 2, 12);
        // A grayscale image is replicated to three channels.
        GrayImage::from_pixel(8, 8, Luma([77]))
            .save(root.join("train/ant/gray.png"))
            .unwrap();
        fs::write(root.join("train/ant/.hidden"), b"ignored").unwrap();

        let d = load_ok(&config(tmp.path()), tmp.path());
        assert_eq!(d.train.classes, vec!["ant", "bee", "cat"]);
        assert_eq!(d.train.labels, vec![0, 0, 0, 0, 1, 1, 1, 2, 2, 2]);
        assert_eq!(d.test.labels, vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(d.train.pixels.len(), 10 * 8 * 8 * 3);
        // Files are sorted: 0000.png, 0001.jpg, 0002.png, gray.png.
        assert!(d.train.image(3).iter().all(|&v| v == 77));
        // Each class keeps its colour (red = 80 * position in the written
        // list: cat 0, ant 80, bee 160), so labels follow the sorted names.
        assert_eq!(d.train.image(0)[0], 80); // ant/0000.png
        assert_eq!(d.train.image(4)[0], 160); // bee/0000.png
        assert_eq!(d.train.image(7)[0], 0); // cat/0000.png
                                            // Test split written as ant 0, cat 80, bee 160; 12x12 resized to 8x8.
        assert!((i32::from(d.test.image(2)[0]) - 160).abs() <= 3); // bee/0000.png
        assert!((i32::from(d.test.image(4)[0]) - 80).abs() <= 3); // cat/0000.png
    }

    #[test]
    fn capped_subset_is_class_balanced_and_seeded() {
        let tmp = tempfile::tempdir().unwrap();
        write_folder(tmp.path(), "train", &["a", "b", "c"], 10, 8);
        write_folder(tmp.path(), "test", &["a", "b", "c"], 4, 8);
        let mut cfg = config(tmp.path());
        cfg.max_train_images = Some(8);
        cfg.max_test_images = Some(6);
        let d = load_ok(&cfg, tmp.path());
        let count = |labels: &[u32], c: u32| labels.iter().filter(|&&l| l == c).count();
        assert_eq!(d.train.len(), 8);
        let counts: Vec<usize> = (0..3).map(|c| count(&d.train.labels, c)).collect();
        assert_eq!(counts.iter().sum::<usize>(), 8);
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
            "{counts:?}"
        );
        assert_eq!(
            (0..3).map(|c| count(&d.test.labels, c)).collect::<Vec<_>>(),
            vec![2, 2, 2]
        );
        // Same seed, same pick.
        let again = load_ok(&cfg, tmp.path());
        assert_eq!(d.train.pixels, again.train.pixels);
    }

    #[test]
    fn balanced_subset_fills_from_larger_classes() {
        let files = |n: usize| {
            (0..n)
                .map(|i| PathBuf::from(format!("{i}")))
                .collect::<Vec<_>>()
        };
        let classes = vec![
            ("a".to_string(), files(1)),
            ("b".to_string(), files(10)),
            ("c".to_string(), files(10)),
        ];
        let pick = balanced_subset(&classes, Some(9), 1);
        let counts: Vec<usize> = (0..3)
            .map(|c| pick.iter().filter(|(_, l)| *l == c).count())
            .collect();
        assert_eq!(counts, vec![1, 4, 4]);
    }

    /// A 64x64 noise JPEG: big enough that cutting its tail leaves every
    /// header intact, the case the lenient decoder would accept.
    fn noise_jpeg() -> Vec<u8> {
        let img = RgbImage::from_fn(64, 64, |x, y| {
            Rgb([(x * 37 + y * 11) as u8, (x * y) as u8, (x ^ y) as u8 * 4])
        });
        let mut bytes = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Jpeg)
            .unwrap();
        bytes
    }

    #[test]
    fn jpeg_completeness_check() {
        let bytes = noise_jpeg();
        assert!(jpeg_is_complete(&bytes));
        assert!(!jpeg_is_complete(&bytes[..bytes.len() * 9 / 10]));
        assert!(!jpeg_is_complete(&bytes[..bytes.len() - 2]));
    }

    #[test]
    fn truncated_jpeg_fails_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        write_folder(tmp.path(), "train", &["a", "b"], 2, 8);
        write_folder(tmp.path(), "test", &["a", "b"], 1, 8);
        let bytes = noise_jpeg();
        let bad = tmp.path().join("train/b/9999.jpg");
        fs::write(&bad, &bytes[..bytes.len() * 9 / 10]).unwrap();
        let msg = load_err(&config(tmp.path()), tmp.path());
        assert!(msg.contains(&bad.display().to_string()), "{msg}");
    }

    #[test]
    fn text_file_named_jpg_fails_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        write_folder(tmp.path(), "train", &["a", "b"], 2, 8);
        write_folder(tmp.path(), "test", &["a", "b"], 1, 8);
        let bad = tmp.path().join("test/a/notes.jpg");
        fs::write(&bad, b"just some text, not an image").unwrap();
        let msg = load_err(&config(tmp.path()), tmp.path());
        assert!(msg.contains(&bad.display().to_string()), "{msg}");
    }

    #[test]
    fn missing_folder_or_split_fails_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        let msg = load_err(&config(&missing), tmp.path());
        assert!(msg.contains(&missing.display().to_string()), "{msg}");

        write_folder(tmp.path(), "train", &["a"], 1, 8);
        let msg = load_err(&config(tmp.path()), tmp.path());
        assert!(
            msg.contains(&tmp.path().join("test").display().to_string()),
            "{msg}"
        );
    }

    #[test]
    fn unknown_test_class_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        write_folder(tmp.path(), "train", &["a"], 1, 8);
        write_folder(tmp.path(), "test", &["a", "zebra"], 1, 8);
        let msg = load_err(&config(tmp.path()), tmp.path());
        assert!(msg.contains("zebra"), "{msg}");
    }

    #[test]
    fn cifar_archive_unpacks_and_loads_a_subset() {
        let archive =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar10-jpg.tar.gz");
        if !archive.exists() {
            eprintln!("SKIPPED: {} is absent", archive.display());
            return;
        }
        let cache = crate::train::tests::shared_test_cache();
        let mut cfg = config(&archive);
        cfg.image_size = 32;
        cfg.max_train_images = Some(50);
        cfg.max_test_images = Some(20);
        let d = load_ok(&cfg, &cache);
        assert_eq!(d.train.classes.len(), 10);
        assert_eq!(d.train.classes[0], "airplane");
        assert_eq!(d.train.len(), 50);
        assert_eq!(d.test.len(), 20);
        assert!(d.train.labels.iter().all(|&l| l < 10));
        // Real photos: not all one colour.
        let img = d.train.image(0);
        assert!(img.iter().any(|&v| v != img[0]));
    }
}
