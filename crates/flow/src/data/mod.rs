//! Training data: IDX image datasets (MNIST-10k and any IDX pair by path), seeded 2-D
//! toy distributions, seeded shuffling and batching, and [`DataSource`], the one
//! interface the trainer draws batches from. See `docs/data.md`.
//!
//! All data lives in `[−1, 1]` (roughly, for the toys; see the docs), matching the
//! method's convention that `t = 0` is data.

pub mod batches;
pub mod idx;
pub mod toy;

pub use batches::{DataState, Shuffler};
pub use idx::{read_idx_images, read_idx_labels, IdxImages, ImageDataset};
pub use toy::Toy2d;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use twinflow_engine::{Device, Error, Generator, Result, Tensor};

/// Every dataset name [`DataSource::from_name`] accepts.
pub const DATASET_NAMES: [&str; 5] = ["moons", "8gaussians", "checkerboard", "spirals", "mnist"];

/// A source of training batches: a toy distribution drawn fresh each batch, or a finite
/// image dataset shuffled every epoch.
#[derive(Debug, Clone)]
pub enum DataSource {
    /// A 2-D toy distribution and the generator it draws from.
    Toy {
        /// The distribution.
        dist: Toy2d,
        /// The generator every batch is drawn from.
        gen: Generator,
    },
    /// A finite image dataset and its shuffler.
    Images {
        /// The dataset's name (e.g. `"mnist"`, or the image file's path).
        name: String,
        /// The samples (shared: cloning the source does not copy them).
        data: Arc<ImageDataset>,
        /// The epoch order.
        shuffler: Shuffler,
    },
}

impl DataSource {
    /// The dataset called `name` (one of [`DATASET_NAMES`]), seeded. `repo_root` is the
    /// directory that holds `data/` (used for `"mnist"`, the shipped MNIST-10k).
    pub fn from_name(name: &str, repo_root: impl AsRef<Path>, seed: u64) -> Result<DataSource> {
        if let Some(dist) = Toy2d::from_name(name) {
            return Ok(DataSource::toy(dist, seed));
        }
        match name {
            "mnist" => {
                let data = ImageDataset::mnist_10k(repo_root)?;
                DataSource::images("mnist", data, seed)
            }
            _ => Err(Error::invalid(
                "data",
                format!(
                    "unknown dataset {name:?} (valid: {})",
                    DATASET_NAMES.join(", ")
                ),
            )),
        }
    }

    /// A toy distribution, seeded.
    pub fn toy(dist: Toy2d, seed: u64) -> DataSource {
        DataSource::Toy {
            dist,
            gen: Generator::new(seed),
        }
    }

    /// A loaded image dataset under `name`, shuffled with `seed`.
    pub fn images(name: impl Into<String>, data: ImageDataset, seed: u64) -> Result<DataSource> {
        let shuffler = Shuffler::new(data.len(), seed)?;
        Ok(DataSource::Images {
            name: name.into(),
            data: Arc::new(data),
            shuffler,
        })
    }

    /// An IDX image/label file pair given by path (full MNIST, Fashion-MNIST, …),
    /// named after the image file's path.
    pub fn idx_files(
        images: impl AsRef<Path>,
        labels: impl AsRef<Path>,
        seed: u64,
    ) -> Result<DataSource> {
        let name = PathBuf::from(images.as_ref()).display().to_string();
        DataSource::images(name, ImageDataset::load(images, labels)?, seed)
    }

    /// The dataset's name.
    pub fn name(&self) -> &str {
        match self {
            DataSource::Toy { dist, .. } => dist.name(),
            DataSource::Images { name, .. } => name,
        }
    }

    /// Values per sample (2 for the toys, `rows·cols` for images).
    pub fn dim(&self) -> usize {
        match self {
            DataSource::Toy { dist, .. } => dist.dim(),
            DataSource::Images { data, .. } => data.dim(),
        }
    }

    /// Number of classes (labels lie in `0..num_classes()`).
    pub fn num_classes(&self) -> usize {
        match self {
            DataSource::Toy { dist, .. } => dist.num_classes(),
            DataSource::Images { data, .. } => data.num_classes(),
        }
    }

    /// Image rows and columns, for image datasets.
    pub fn image_size(&self) -> Option<(usize, usize)> {
        match self {
            DataSource::Toy { .. } => None,
            DataSource::Images { data, .. } => Some((data.rows, data.cols)),
        }
    }

    /// The next batch on the CPU: samples `[batch_size, dim()]` f32 and labels
    /// `[batch_size]` i64.
    pub fn next_batch(&mut self, batch_size: usize) -> Result<(Tensor, Tensor)> {
        if batch_size == 0 {
            return Err(Error::invalid("data", "batch size must be positive"));
        }
        match self {
            DataSource::Toy { dist, gen } => dist.sample_tensors(batch_size, gen),
            DataSource::Images { data, shuffler, .. } => {
                let idx = shuffler.next_indices(batch_size)?;
                let d = data.dim();
                let mut x = Vec::with_capacity(batch_size * d);
                let mut y = Vec::with_capacity(batch_size);
                for &i in &idx {
                    x.extend_from_slice(data.image(i));
                    y.push(data.labels[i]);
                }
                Ok((
                    Tensor::from_vec(x, &[batch_size, d], Device::Cpu)?,
                    Tensor::from_vec(y, &[batch_size], Device::Cpu)?,
                ))
            }
        }
    }

    /// The state to save with a checkpoint.
    pub fn state(&self) -> DataState {
        match self {
            DataSource::Toy { gen, .. } => {
                let g = gen.state();
                DataState {
                    epoch: 0,
                    position: 0,
                    seed: g.seed,
                    offset: g.offset,
                }
            }
            DataSource::Images { shuffler, .. } => shuffler.state(),
        }
    }

    /// Resumes from a saved state: the following batches are exactly those the saved
    /// source would have given.
    pub fn set_state(&mut self, state: DataState) -> Result<()> {
        match self {
            DataSource::Toy { gen, .. } => {
                gen.set_state(state.generator());
                Ok(())
            }
            DataSource::Images { shuffler, .. } => shuffler.set_state(state),
        }
    }
}
