//! The fixed train / held-out split of an image dataset.

use crate::data::ImageDataset;
use twinflow_engine::{Error, Result};

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
