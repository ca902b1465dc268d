//! The user's own data: `.npy` arrays, a folder of PNG files (grey and RGB), any IDX
//! pair, and Fashion-MNIST (skipped, saying so, where it is not installed); the
//! `[data]` keys each needs; an RGB folder training a DiT with three channels.

use std::fs;
use std::path::{Path, PathBuf};
use twinflow::flow::data::{load_fashion_mnist, DataConfig, DataSource, Split};
use twinflow::flow::train::{TrainConfig, Trainer};

/// A fresh, empty directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("twinflow-user-{}-{test}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The error with its causes, as the command line prints it.
fn err_of<T: std::fmt::Debug>(r: twinflow::engine::Result<T>) -> String {
    twinflow::engine::report(&r.unwrap_err())
}

/// A `.npy` file as `numpy.save` writes it (format 1.0, C order).
fn write_npy(path: &Path, descr: &str, shape: &[usize], payload: &[u8]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(payload);
    fs::write(path, bytes).unwrap();
}

fn labels_npy(path: &Path, labels: &[i64]) {
    let payload: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    write_npy(path, "<i8", &[labels.len()], &payload);
}

fn config(dataset: &str, path: Option<&Path>, labels: Option<&Path>) -> DataConfig {
    DataConfig {
        path: path.map(Path::to_path_buf),
        labels: labels.map(Path::to_path_buf),
        ..DataConfig::named(dataset, 4)
    }
}

/// The first sample of a fresh source (seeded shuffling aside: a one-sample set).
fn only_sample(source: &mut DataSource) -> (Vec<f32>, i64) {
    let (x, labels) = source.next_batch(1).unwrap();
    (x.to_vec().unwrap(), labels.to_vec::<i64>().unwrap()[0])
}

#[test]
fn npy_arrays_load_as_images_or_vectors() {
    let dir = scratch("npy");
    // uint8 [1, 3, 2, 2] RGB: bytes scaled to [−1, 1], channel-major as stored.
    let rgb: Vec<u8> = (0..12).map(|i| (i * 20) as u8).collect();
    write_npy(&dir.join("rgb.npy"), "|u1", &[1, 3, 2, 2], &rgb);
    labels_npy(&dir.join("one.npy"), &[2]);
    let cfg = config(
        "npy",
        Some(&dir.join("rgb.npy")),
        Some(&dir.join("one.npy")),
    );
    let mut source = DataSource::from_config(&cfg, 0).unwrap();
    let shape = source.image_shape().unwrap();
    assert_eq!((shape.channels, shape.rows, shape.cols), (3, 2, 2));
    assert_eq!(source.num_classes(), 3);
    let (x, label) = only_sample(&mut source);
    let want: Vec<f32> = rgb.iter().map(|&b| b as f32 / 127.5 - 1.0).collect();
    assert_eq!((x, label), (want, 2));

    // float32 [2, 3] vectors: taken as they are, no image shape.
    let values = [0.5f32, -0.25, 1.0, 0.0, 0.75, -1.0];
    let payload: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(&dir.join("vec.npy"), "<f4", &[2, 3], &payload);
    labels_npy(&dir.join("two.npy"), &[0, 1]);
    let cfg = config(
        "npy",
        Some(&dir.join("vec.npy")),
        Some(&dir.join("two.npy")),
    );
    let source = DataSource::from_config(&cfg, 0).unwrap();
    assert_eq!((source.dim(), source.image_shape()), (3, None));

    // Faults name the file and the fault.
    write_npy(&dir.join("ints.npy"), "<i8", &[1, 1], &[0; 8]);
    let cases = [
        ("vec.npy", "one.npy", "expected [2]"),
        ("ints.npy", "one.npy", "int64 data"),
        ("rgb.npy", "rgb.npy", "labels must be int64"),
    ];
    for (data, labels, why) in cases {
        let cfg = config("npy", Some(&dir.join(data)), Some(&dir.join(labels)));
        let e = err_of(DataSource::from_config(&cfg, 0));
        assert!(e.contains(why) && e.contains(".npy"), "{e} lacks {why}");
    }
    labels_npy(&dir.join("negative.npy"), &[-1]);
    let cfg = config(
        "npy",
        Some(&dir.join("rgb.npy")),
        Some(&dir.join("negative.npy")),
    );
    assert!(err_of(DataSource::from_config(&cfg, 0)).contains("negative"));
    write_npy(&dir.join("four.npy"), "|u1", &[1, 4, 1, 1], &[0; 4]);
    let cfg = config(
        "npy",
        Some(&dir.join("four.npy")),
        Some(&dir.join("one.npy")),
    );
    assert!(err_of(DataSource::from_config(&cfg, 0)).contains("4 channels"));
    let nan = f32::NAN.to_le_bytes();
    write_npy(&dir.join("nan.npy"), "<f4", &[1, 1], &nan);
    let cfg = config(
        "npy",
        Some(&dir.join("nan.npy")),
        Some(&dir.join("one.npy")),
    );
    assert!(err_of(DataSource::from_config(&cfg, 0)).contains("NaN"));
    let _ = fs::remove_dir_all(&dir);
}

/// Writes an 8-bit PNG of `colour` with `pixels` interleaved.
fn write_png(path: &Path, (width, height): (u32, u32), colour: png::ColorType, pixels: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(colour);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(pixels).unwrap();
}

#[test]
fn an_image_folder_gives_one_class_per_subfolder() {
    let dir = scratch("folder");
    let grey = png::ColorType::Grayscale;
    write_png(&dir.join("b-dogs/1.png"), (2, 2), grey, &[0, 255, 0, 255]);
    write_png(&dir.join("a-cats/x.png"), (2, 2), grey, &[255; 4]);
    write_png(&dir.join("a-cats/y.PNG"), (2, 2), grey, &[0; 4]);
    fs::write(dir.join("a-cats/notes.txt"), "not an image").unwrap();
    let mut source = DataSource::from_config(&config("image-folder", Some(&dir), None), 0).unwrap();
    assert_eq!(source.class_names(), ["a-cats", "b-dogs"]);
    assert_eq!((source.num_classes(), source.dim()), (2, 4));
    let (x, labels) = source.next_batch(3).unwrap();
    let (x, labels) = (x.to_vec::<f32>().unwrap(), labels.to_vec::<i64>().unwrap());
    for (i, &label) in labels.iter().enumerate() {
        let sample = &x[4 * i..4 * i + 4];
        let dog = [-1.0, 1.0, -1.0, 1.0];
        assert!(
            label == 1 && sample == dog
                || label == 0 && (sample == [1.0; 4] || sample == [-1.0; 4])
        );
    }

    // RGB: interleaved pixels become channel-major.
    let rgb_dir = scratch("folder-rgb");
    let rgb = png::ColorType::Rgb;
    write_png(
        &rgb_dir.join("only/a.png"),
        (2, 1),
        rgb,
        &[255, 0, 0, 0, 0, 255],
    );
    let mut source =
        DataSource::from_config(&config("image-folder", Some(&rgb_dir), None), 0).unwrap();
    let shape = source.image_shape();
    assert_eq!(
        shape.map(|s| (s.channels, s.rows, s.cols)),
        None,
        "one row is not an image"
    );
    let (x, _) = only_sample(&mut source);
    assert_eq!(x, [1.0, -1.0, -1.0, -1.0, -1.0, 1.0]);

    // Faults: mixed sizes or colours, alpha, an empty class, no classes.
    write_png(&dir.join("b-dogs/2.png"), (3, 2), grey, &[0; 6]);
    let e = err_of(DataSource::from_config(
        &config("image-folder", Some(&dir), None),
        0,
    ));
    assert!(
        e.contains("2.png") && e.contains("3×2 grey") && e.contains("2×2 grey"),
        "{e}"
    );
    fs::remove_file(dir.join("b-dogs/2.png")).unwrap();
    write_png(
        &dir.join("b-dogs/3.png"),
        (2, 2),
        png::ColorType::Rgba,
        &[0; 16],
    );
    let e = err_of(DataSource::from_config(
        &config("image-folder", Some(&dir), None),
        0,
    ));
    assert!(e.contains("3.png") && e.contains("alpha"), "{e}");
    fs::remove_file(dir.join("b-dogs/3.png")).unwrap();
    fs::create_dir_all(dir.join("c-empty")).unwrap();
    let e = err_of(DataSource::from_config(
        &config("image-folder", Some(&dir), None),
        0,
    ));
    assert!(e.contains("c-empty") && e.contains("no .png"), "{e}");
    let empty = scratch("folder-empty");
    let e = err_of(DataSource::from_config(
        &config("image-folder", Some(&empty), None),
        0,
    ));
    assert!(e.contains("no class subfolders"), "{e}");
    for d in [dir, rgb_dir, empty] {
        let _ = fs::remove_dir_all(d);
    }
}

#[test]
fn each_dataset_asks_for_exactly_its_keys() {
    let cases = [
        (config("idx", None, None), "needs data.path"),
        (
            config("npy", Some(Path::new("a.npy")), None),
            "needs data.labels",
        ),
        (
            config("image-folder", Some(Path::new("d")), Some(Path::new("l"))),
            "takes no labels",
        ),
        (config("mnist", Some(Path::new("d")), None), "takes no path"),
    ];
    for (cfg, why) in cases {
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains(why), "{e} lacks {why}");
    }
    assert!(config("moons", None, None).validate().is_ok());
}

#[test]
fn fashion_mnist_loads_both_splits_where_installed() {
    let train = match load_fashion_mnist(None, Split::Train) {
        Ok(data) => data,
        Err(e) => {
            eprintln!("skipping: Fashion-MNIST is not installed here ({e})");
            return;
        }
    };
    let test = load_fashion_mnist(None, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(
        (train.shape().channels, train.rows, train.cols),
        (1, 28, 28)
    );
    assert_eq!(train.num_classes(), 10);
    assert_eq!(train.class_names[9], "ankle boot");
    for data in [&train, &test] {
        let mut counts = [0usize; 10];
        data.labels.iter().for_each(|&l| counts[l as usize] += 1);
        assert!(counts.iter().all(|&c| c == data.len() / 10), "{counts:?}");
    }
    let e = err_of(load_fashion_mnist(
        Some(Path::new("/nonexistent")),
        Split::Train,
    ));
    assert!(e.contains("/nonexistent"), "{e}");
}

#[test]
fn an_rgb_folder_trains_a_three_channel_dit() {
    let dir = scratch("rgb-dit");
    for (class, value) in [("dark", 20u8), ("light", 230)] {
        for i in 0..3 {
            let pixels = vec![value.saturating_add(i); 4 * 4 * 3];
            write_png(
                &dir.join(format!("{class}/{i}.png")),
                (4, 4),
                png::ColorType::Rgb,
                &pixels,
            );
        }
    }
    let toml = |channels: usize| {
        format!(
            r#"steps = 2
[model]
kind = "dit"
[model.dit]
image_size = 4
channels = {channels}
patch = 2
dim = 16
depth = 1
heads = 2
mlp_ratio = 2
num_classes = 2
[method]
name = "flow_matching"
[data]
dataset = "image-folder"
path = {:?}
batch_size = 4
"#,
            dir.to_str().unwrap()
        )
    };
    let cfg = TrainConfig::from_toml(&toml(3), "rgb.toml").unwrap();
    let mut trainer = Trainer::new(cfg).unwrap();
    assert!(trainer.step().unwrap().loss.is_finite());
    let cfg = TrainConfig::from_toml(&toml(1), "grey.toml").unwrap();
    let e = err_of(Trainer::new(cfg));
    assert!(
        e.contains("model.dit.channels is 1") && e.contains("has 3"),
        "{e}"
    );
    let _ = fs::remove_dir_all(&dir);
}
