//! The fixed train / held-out split of an image dataset, for its evaluation classifier
//! and the floor of its scores.

use crate::data::{load_fashion_mnist, load_images, DataConfig, ImageDataset, Split};
use twinflow_engine::{Error, Generator, Result};

/// Images of MNIST-10k held out from classifier training: the last 1,000 of the
/// 10,000 (the shipped order is a fixed shuffle, so the tail holds every class).
pub const MNIST_HELD_OUT: usize = 1000;

/// Splits `data` into its first `len − held_out` samples (for training) and its last
/// `held_out` samples (never trained on). Fails unless both parts are non-empty.
pub fn held_out_split(
    data: &ImageDataset,
    held_out: usize,
) -> Result<(ImageDataset, ImageDataset)> {
    if held_out == 0 || held_out >= data.len() {
        return Err(Error::invalid(
            "held_out_split",
            format!(
                "cannot hold out {held_out} of {} samples (both parts must be non-empty)",
                data.len()
            ),
        ));
    }
    let cut = data.len() - held_out;
    let part = |range: std::ops::Range<usize>| ImageDataset {
        images: data.images[range.start * data.dim()..range.end * data.dim()].to_vec(),
        labels: data.labels[range].to_vec(),
        channels: data.channels,
        rows: data.rows,
        cols: data.cols,
        class_names: data.class_names.clone(),
    };
    Ok((part(0..cut), part(cut..data.len())))
}

/// Share of a user's dataset (`idx`, `npy`, `image-folder`) held out from classifier
/// training, at least one image.
pub const USER_HELD_OUT_FRACTION: f64 = 0.1;

/// Seed of the fixed shuffle that picks a user's dataset's held-out images (a folder is
/// read class after class, so its tail alone would be one class).
const USER_SPLIT_SEED: u64 = 0x5EED_0FE7_A15B_1700;

/// The images an evaluation classifier of a dataset trains on, those it is measured on
/// (never trained on), and which they are, in words.
#[derive(Debug, Clone)]
pub struct EvalSplit {
    /// The training images (also the reference of the Fréchet distance).
    pub train: ImageDataset,
    /// The held-out images (the floor's real samples).
    pub held_out: ImageDataset,
    /// Which images are held out, e.g. "the 10000 test images of Fashion-MNIST".
    pub description: String,
}

/// The fixed split of the image dataset `cfg` describes: MNIST-10k holds out its last
/// [`MNIST_HELD_OUT`] digits, Fashion-MNIST its test split, the user's datasets a fixed
/// random [`USER_HELD_OUT_FRACTION`] of their images. The toys have none (they are
/// scored by distances to fresh draws).
pub fn eval_split(cfg: &DataConfig) -> Result<EvalSplit> {
    split_images(cfg, &load_images(cfg)?)
}

/// [`eval_split`] of `data`, the images `cfg` describes as training loads them
/// ([`load_images`]), for a caller that holds them already (a trainer).
pub fn split_images(cfg: &DataConfig, data: &ImageDataset) -> Result<EvalSplit> {
    let (train, held_out, description) = match cfg.dataset.as_str() {
        "mnist" => {
            let (train, held_out) = held_out_split(data, MNIST_HELD_OUT)?;
            let description = format!(
                "the last {} of the {} digits of data/mnist-10k",
                held_out.len(),
                data.len()
            );
            (train, held_out, description)
        }
        "fashion-mnist" => {
            // Training reads the training split; the test split is the held-out one.
            let held_out = load_fashion_mnist(cfg.root.as_deref(), Split::Test)?;
            let description = format!("the {} test images of Fashion-MNIST", held_out.len());
            (data.clone(), held_out, description)
        }
        "idx" | "npy" | "image-folder" => {
            let data = shuffled(data)?;
            let held_out = ((data.len() as f64 * USER_HELD_OUT_FRACTION).round() as usize).max(1);
            let (train, held_out) = held_out_split(&data, held_out)?;
            let description = format!(
                "a fixed random {} of the {} images of {}",
                held_out.len(),
                data.len(),
                dataset_identity(cfg)
            );
            (train, held_out, description)
        }
        other => {
            return Err(Error::invalid(
                "eval",
                format!("dataset \"{other}\" has no evaluation classifier: only image datasets do"),
            ))
        }
    };
    Ok(EvalSplit {
        train,
        held_out,
        description,
    })
}

/// The dataset a classifier belongs to, as stored in its file: the name, and for the
/// user's files the path (`image-folder my-images`).
pub fn dataset_identity(cfg: &DataConfig) -> String {
    match &cfg.path {
        Some(path) => format!("{} {}", cfg.dataset, path.display()),
        None => cfg.dataset.clone(),
    }
}

/// `data` in the order of a fixed permutation.
fn shuffled(data: &ImageDataset) -> Result<ImageDataset> {
    let order = Generator::new(USER_SPLIT_SEED).permutation(data.len());
    let mut images = Vec::new();
    images
        .try_reserve_exact(data.images.len())
        .map_err(|_| Error::invalid("eval", "not enough memory to shuffle the images"))?;
    for &i in &order {
        images.extend_from_slice(data.image(i as usize));
    }
    Ok(ImageDataset {
        images,
        labels: order.iter().map(|&i| data.labels[i as usize]).collect(),
        channels: data.channels,
        rows: data.rows,
        cols: data.cols,
        class_names: data.class_names.clone(),
    })
}
