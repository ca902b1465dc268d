//! Training data: the shipped MNIST-10k, IDX error reports, the toy distributions, and
//! seeded batching with exact save/restore.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use twinflow::engine::Generator;
use twinflow::flow::data::{
    read_idx_images, read_idx_labels, DataSource, ImageDataset, Shuffler, Toy2d, DATASET_NAMES,
};

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh, empty directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("twinflow-data-{}-{test}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn idx_images(count: u32, rows: u32, cols: u32, payload: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for w in [0x0803u32, count, rows, cols] {
        b.extend_from_slice(&w.to_be_bytes());
    }
    b.extend((0..payload).map(|i| (i * 37 % 256) as u8));
    b
}

fn idx_labels(count: u32, payload: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for w in [0x0801u32, count] {
        b.extend_from_slice(&w.to_be_bytes());
    }
    b.extend((0..payload).map(|i| (i % 3) as u8));
    b
}

/// The error with its causes, as the command line prints it.
fn err_of<T: std::fmt::Debug>(r: twinflow::engine::Result<T>) -> String {
    twinflow::engine::report(&r.unwrap_err())
}

#[test]
fn shipped_mnist_10k_loads_with_the_readme_class_counts() {
    let d = ImageDataset::mnist_10k(repo_root()).unwrap();
    assert_eq!((d.len(), d.rows, d.cols, d.dim()), (10_000, 28, 28, 784));
    assert_eq!(d.images.len(), 10_000 * 784);
    assert_eq!(d.num_classes(), 10);
    let mut counts = [0usize; 10];
    for &l in &d.labels {
        counts[l as usize] += 1;
    }
    assert_eq!(
        counts,
        [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    );
    let (lo, hi) = d
        .images
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    assert_eq!((lo, hi), (-1.0, 1.0));
    // Background dominates: most pixels are exactly −1.
    let bg = d.images.iter().filter(|&&v| v == -1.0).count();
    assert!(bg > d.images.len() / 2);

    let src = DataSource::from_name("mnist", repo_root(), 0).unwrap();
    assert_eq!(
        (src.dim(), src.num_classes(), src.name()),
        (784, 10, "mnist")
    );
    let shape = src.image_shape().unwrap();
    assert_eq!((shape.channels, shape.rows, shape.cols), (1, 28, 28));
}

#[test]
fn plain_idx_pairs_load_and_scale_pixels() {
    let dir = scratch("plain");
    let (img, lab) = (dir.join("img"), dir.join("lab"));
    fs::write(&img, idx_images(3, 2, 5, 30)).unwrap();
    fs::write(&lab, idx_labels(3, 3)).unwrap();
    let d = ImageDataset::load(&img, &lab).unwrap();
    assert_eq!((d.len(), d.dim(), d.num_classes()), (3, 10, 3));
    let raw = read_idx_images(&img).unwrap();
    for (b, v) in raw.pixels.iter().zip(&d.images) {
        assert_eq!(*v, *b as f32 / 127.5 - 1.0);
    }
    assert_eq!(read_idx_labels(&lab).unwrap(), vec![0, 1, 2]);
    let mut src = DataSource::idx_files(&img, &lab, 1).unwrap();
    let (x, y) = src.next_batch(3).unwrap();
    assert_eq!((x.shape(), y.shape()), (&[3, 10][..], &[3][..]));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn broken_idx_files_give_clear_errors() {
    let dir = scratch("broken");
    let case = |name: &str, bytes: Vec<u8>| {
        let p = dir.join(name);
        fs::write(&p, bytes).unwrap();
        p
    };
    // Truncated payload.
    let p = case("trunc-img", idx_images(4, 3, 3, 30));
    let e = err_of(read_idx_images(&p));
    assert!(
        e.contains("trunc-img") && e.contains("truncated payload"),
        "{e}"
    );
    assert!(e.contains("30") && e.contains("36"), "{e}");
    // Truncated header.
    let p = case("trunc-head", idx_images(4, 3, 3, 0)[..10].to_vec());
    let e = err_of(read_idx_images(&p));
    assert!(
        e.contains("trunc-head") && e.contains("truncated header"),
        "{e}"
    );
    // Empty file.
    let p = case("empty", vec![]);
    assert!(err_of(read_idx_labels(&p)).contains("truncated header"));
    // Wrong magic: a label file read as images and vice versa.
    let p = case("labels-as-images", idx_labels(3, 3));
    let e = err_of(read_idx_images(&p));
    assert!(
        e.contains("labels-as-images") && e.contains("wrong magic number 0x00000801"),
        "{e}"
    );
    let p = case("images-as-labels", idx_images(1, 2, 2, 4));
    let e = err_of(read_idx_labels(&p));
    assert!(e.contains("wrong magic number 0x00000803"), "{e}");
    // Extra bytes.
    let p = case("long-labels", idx_labels(3, 5));
    let e = err_of(read_idx_labels(&p));
    assert!(
        e.contains("long-labels") && e.contains("size mismatch") && e.contains("2 extra"),
        "{e}"
    );
    // Zero-sized images.
    let p = case("zero-rows", idx_images(2, 0, 3, 0));
    assert!(err_of(read_idx_images(&p)).contains("must be positive"));
    // A gzip header followed by garbage.
    let p = case("bad.gz", vec![0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5]);
    let e = err_of(read_idx_images(&p));
    assert!(e.contains("bad.gz") && e.contains("gzip"), "{e}");
    // Missing file.
    let e = err_of(read_idx_labels(dir.join("nope")));
    assert!(e.contains("nope") && e.contains("os error"), "{e}");
    // Image and label counts that disagree.
    let img = case("img4", idx_images(4, 2, 2, 16));
    let lab = case("lab3", idx_labels(3, 3));
    let e = err_of(ImageDataset::load(&img, &lab));
    assert!(
        e.contains("img4") && e.contains("lab3") && e.contains("4 images"),
        "{e}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn unknown_dataset_names_list_the_valid_ones() {
    let e = err_of(DataSource::from_name("cifar", repo_root(), 0));
    assert!(e.contains("\"cifar\""), "{e}");
    for n in DATASET_NAMES {
        assert!(e.contains(n), "{e}");
    }
    assert!(err_of("nope".parse::<Toy2d>()).contains("checkerboard"));
    for t in Toy2d::ALL {
        assert_eq!(t.name().parse::<Toy2d>().unwrap(), t);
        let s = DataSource::from_name(t.name(), repo_root(), 0).unwrap();
        assert_eq!(
            (s.dim(), s.num_classes(), s.name()),
            (2, t.num_classes(), t.name())
        );
    }
}

#[test]
fn toy_samplers_are_seeded_and_stay_in_their_documented_ranges() {
    let n = 20_000;
    for t in Toy2d::ALL {
        let a = t.sample(n, &mut Generator::new(5)).unwrap();
        let b = t.sample(n, &mut Generator::new(5)).unwrap();
        let c = t.sample(n, &mut Generator::new(6)).unwrap();
        assert_eq!(a, b, "{t}: same seed, same samples");
        assert_ne!(a.0, c.0, "{t}: other seed, other samples");
        // A second draw from one generator differs from the first.
        let mut g = Generator::new(5);
        let first = t.sample(16, &mut g).unwrap();
        let second = t.sample(16, &mut g).unwrap();
        assert_ne!(first.0, second.0);

        let (x, y) = a;
        assert_eq!((x.len(), y.len()), (2 * n, n));
        // Documented bounds (noise tails at 6σ for the noisy ones).
        let (bx, by) = match t {
            Toy2d::Moons => (1.0 + 6.0 * 0.1 / 1.5, 0.5 + 6.0 * 0.1 / 1.5),
            Toy2d::EightGaussians => (0.8 + 6.0 * 0.08, 0.8 + 6.0 * 0.08),
            Toy2d::Checkerboard => (1.0, 1.0),
            Toy2d::Spirals => (1.0 + 6.0 * 0.03, 1.0 + 6.0 * 0.03),
        };
        for p in x.chunks(2) {
            assert!(p[0].abs() <= bx && p[1].abs() <= by, "{t}: {p:?}");
        }
        // Labels in range, every class about equally often.
        let k = t.num_classes();
        let mut counts = vec![0usize; k];
        for &l in &y {
            counts[l as usize] += 1;
        }
        let expect = n as f64 / k as f64;
        for &c in &counts {
            assert!(
                (c as f64 - expect).abs() < 5.0 * expect.sqrt(),
                "{t}: {counts:?}"
            );
        }
        // Class means are where the definitions put them.
        let mean = |cls: i64| {
            let pts: Vec<&[f32]> = x
                .chunks(2)
                .zip(&y)
                .filter(|(_, &l)| l == cls)
                .map(|(p, _)| p)
                .collect();
            let m = pts.len() as f64;
            (
                pts.iter().map(|p| p[0] as f64).sum::<f64>() / m,
                pts.iter().map(|p| p[1] as f64).sum::<f64>() / m,
            )
        };
        match t {
            Toy2d::Moons => {
                // Upper moon's mean (0, 2/π) and lower moon's (1, 0.5 − 2/π), centred and scaled.
                let (m0, m1) = (mean(0), mean(1));
                let tp = 2.0 / std::f64::consts::PI;
                assert!((m0.0 + 0.5 / 1.5).abs() < 0.02 && (m0.1 - (tp - 0.25) / 1.5).abs() < 0.02);
                assert!((m1.0 - 0.5 / 1.5).abs() < 0.02 && (m1.1 - (0.25 - tp) / 1.5).abs() < 0.02);
            }
            Toy2d::EightGaussians => {
                for c in 0..8 {
                    let a = c as f64 * std::f64::consts::FRAC_PI_4;
                    let m = mean(c);
                    assert!(
                        (m.0 - 0.8 * a.cos()).abs() < 0.02 && (m.1 - 0.8 * a.sin()).abs() < 0.02
                    );
                }
            }
            Toy2d::Checkerboard => {
                for (p, &l) in x.chunks(2).zip(&y) {
                    let col = ((p[0] + 1.0) * 2.0).floor() as i64;
                    let row = ((p[1] + 1.0) * 2.0).floor() as i64;
                    assert_eq!((row + col) % 2, 0, "dark squares only: {p:?}");
                    assert_eq!(l, row * 2 + col / 2, "square index: {p:?}");
                }
            }
            Toy2d::Spirals => {
                // The arms are point reflections of each other.
                let (m0, m1) = (mean(0), mean(1));
                assert!((m0.0 + m1.0).abs() < 0.03 && (m0.1 + m1.1).abs() < 0.03);
            }
        }
    }
}

#[test]
fn batches_cover_each_epoch_without_repeats() {
    let n = 10;
    let mut s = Shuffler::new(n, 3).unwrap();
    let mut all = Vec::new();
    for _ in 0..10 {
        all.extend(s.next_indices(3).unwrap());
    }
    for (e, epoch) in all.chunks(n).enumerate() {
        let set: HashSet<usize> = epoch.iter().copied().collect();
        assert_eq!(set, (0..n).collect::<HashSet<_>>(), "epoch {e}");
    }
    assert_ne!(&all[..n], &all[n..2 * n], "each epoch has its own order");
    assert_eq!((s.epoch(), s.position()), (2, 10));
    let other: Vec<usize> = Shuffler::new(n, 4).unwrap().next_indices(n).unwrap();
    assert_ne!(other, all[..n]);
    assert!(s.next_indices(0).is_err());
    assert!(Shuffler::new(0, 0).is_err());

    // Through a data source: one epoch of a small image set sees every image once.
    let dir = scratch("epoch");
    let (img, lab) = (dir.join("img"), dir.join("lab"));
    fs::write(&img, idx_images(6, 1, 2, 12)).unwrap();
    fs::write(&lab, idx_labels(6, 6)).unwrap();
    let data = ImageDataset::load(&img, &lab).unwrap();
    let mut src = DataSource::images("tiny", data.clone(), 9).unwrap();
    let (x, y) = src.next_batch(6).unwrap();
    let (x, y) = (x.to_vec::<f32>().unwrap(), y.to_vec::<i64>().unwrap());
    let mut seen = HashSet::new();
    for (p, l) in x.chunks(2).zip(&y) {
        let i = (0..6)
            .find(|&i| data.image(i) == p && data.labels[i] == *l)
            .unwrap();
        assert!(seen.insert(i));
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn restored_state_reproduces_the_next_batches() {
    let batches = |src: &mut DataSource, k: usize| -> Vec<(Vec<f32>, Vec<i64>)> {
        (0..k)
            .map(|_| {
                let (x, y) = src.next_batch(7).unwrap();
                (x.to_vec().unwrap(), y.to_vec().unwrap())
            })
            .collect()
    };
    let dir = scratch("resume");
    let (img, lab) = (dir.join("img"), dir.join("lab"));
    fs::write(&img, idx_images(10, 1, 3, 30)).unwrap();
    fs::write(&lab, idx_labels(10, 10)).unwrap();
    let sources = [
        DataSource::idx_files(&img, &lab, 11).unwrap(),
        DataSource::toy(Toy2d::Moons, 11),
        DataSource::toy(Toy2d::Checkerboard, 12),
    ];
    for mut a in sources {
        batches(&mut a, 3); // mid-epoch for the images (21 of 30 drawn, epoch 2)
        let saved = a.state();
        let json = serde_json::to_string(&saved).unwrap();
        let want = batches(&mut a, 5);
        // A fresh source with another seed, restored, continues identically.
        let mut b = match &a {
            DataSource::Toy { dist, .. } => DataSource::toy(*dist, 999),
            DataSource::Images { .. } => DataSource::idx_files(&img, &lab, 999).unwrap(),
        };
        b.set_state(serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(batches(&mut b, 5), want, "{}", a.name());
    }
    let mut s = Shuffler::new(4, 0).unwrap();
    let mut bad = s.state();
    bad.position = 5;
    assert!(s.set_state(bad).is_err());
    let _ = fs::remove_dir_all(&dir);
}
