//! Training data: image datasets (the shipped MNIST-10k, Fashion-MNIST, any IDX pair,
//! `.npy` arrays, a folder of PNG files), seeded 2-D toy distributions, seeded
//! shuffling and batching, and [`DataSource`], the one interface the trainer draws
//! batches from. See `docs/data.md`.
//!
//! All data lives in `[−1, 1]` (roughly, for the toys; see the docs), matching the
//! method's convention that `t = 0` is data.

pub mod batches;
mod config;
pub mod fashion_mnist;
pub mod idx;
pub mod image_folder;
pub mod images;
pub mod npy;
pub mod toy;

pub use batches::{DataState, Shuffler};
pub use config::DataConfig;
pub use fashion_mnist::{load_fashion_mnist, Split};
pub use idx::{parse_idx_images, parse_idx_labels, read_idx_images, read_idx_labels, IdxImages};
pub use image_folder::{decode_png, load_image_folder, PngImage};
pub use images::{ImageDataset, ImageShape};
pub use npy::{load_npy_dataset, parse_npy_dataset};
pub use toy::Toy2d;

use std::path::Path;
use std::sync::Arc;
use twinflow_engine::{sizes, Device, Error, Generator, Result, Tensor};

/// Every dataset name of `[data] dataset`: the toys, the shipped MNIST-10k,
/// Fashion-MNIST, and the user's files (`idx`, `npy`, `image-folder`).
pub const DATASET_NAMES: [&str; 9] = [
    "moons",
    "8gaussians",
    "checkerboard",
    "spirals",
    "mnist",
    "fashion-mnist",
    "idx",
    "npy",
    "image-folder",
];

/// The next `batch_size` images of `data` in `shuffler`'s order, and their labels.
fn image_batch(
    data: &ImageDataset,
    shuffler: &mut Shuffler,
    batch_size: usize,
) -> Result<(Tensor, Tensor)> {
    let d = data.dim();
    let values = batch_size.checked_mul(d).ok_or(Error::OutOfMemory {
        op: "data",
        what: "more values than memory can address".into(),
    })?;
    let mut x = sizes::try_vec("data", values)?;
    let mut y = sizes::try_vec("data", batch_size)?;
    for i in shuffler.next_indices(batch_size)? {
        x.extend_from_slice(data.image(i));
        y.push(data.labels[i]);
    }
    Ok((
        Tensor::from_vec(x, &[batch_size, d], Device::Cpu)?,
        Tensor::from_vec(y, &[batch_size], Device::Cpu)?,
    ))
}

/// The images of the dataset `cfg` describes (checked first), in file order; an error
/// for the toys, which are drawn, not loaded.
pub fn load_images(cfg: &DataConfig) -> Result<ImageDataset> {
    cfg.validate()?;
    let root = cfg.root.as_deref();
    match cfg.dataset.as_str() {
        "mnist" => ImageDataset::mnist_10k(root.unwrap_or(Path::new("."))),
        "fashion-mnist" => load_fashion_mnist(root, Split::Train),
        "idx" => ImageDataset::load(cfg.path()?, cfg.labels()?),
        "npy" => load_npy_dataset(cfg.path()?, cfg.labels()?),
        "image-folder" => load_image_folder(cfg.path()?),
        name => Err(Error::invalid(
            "data",
            format!(
                "unknown image dataset {name:?} (valid: {})",
                DATASET_NAMES.join(", ")
            ),
        )),
    }
}

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
    /// The dataset called `name` (one of [`DATASET_NAMES`] that takes no file paths),
    /// seeded. `root` is the directory that holds `data/` (for `"mnist"`, the shipped
    /// MNIST-10k) or the Fashion-MNIST files.
    pub fn from_name(name: &str, root: impl AsRef<Path>, seed: u64) -> Result<DataSource> {
        let mut cfg = DataConfig::named(name, 1);
        cfg.root = Some(root.as_ref().to_path_buf());
        DataSource::from_config(&cfg, seed)
    }

    /// The dataset `cfg` describes (checked first), seeded.
    pub fn from_config(cfg: &DataConfig, seed: u64) -> Result<DataSource> {
        let name = cfg.dataset.as_str();
        if let Some(dist) = Toy2d::from_name(name) {
            return Ok(DataSource::toy(dist, seed));
        }
        let data = load_images(cfg)?;
        let label = match &cfg.path {
            Some(path) => path.display().to_string(),
            None => name.to_string(),
        };
        DataSource::images(label, data, seed)
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
        let mut cfg = DataConfig::named("idx", 1);
        cfg.path = Some(images.as_ref().to_path_buf());
        cfg.labels = Some(labels.as_ref().to_path_buf());
        DataSource::from_config(&cfg, seed)
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

    /// The shape of one image, for image datasets (not for the toys, nor for
    /// vectors read from an `[N, D]` array).
    pub fn image_shape(&self) -> Option<ImageShape> {
        match self {
            DataSource::Toy { .. } => None,
            DataSource::Images { data, .. } => (data.rows > 1).then(|| data.shape()),
        }
    }

    /// The classes' names by label, when the dataset names them.
    pub fn class_names(&self) -> &[String] {
        match self {
            DataSource::Toy { .. } => &[],
            DataSource::Images { data, .. } => &data.class_names,
        }
    }

    /// The next batch on the CPU: samples `[batch_size, dim()]` f32 and labels
    /// `[batch_size]` i64.
    /// A batch too large for the machine is an [`Error::OutOfMemory`] that names its
    /// size.
    pub fn next_batch(&mut self, batch_size: usize) -> Result<(Tensor, Tensor)> {
        if batch_size == 0 {
            return Err(Error::invalid("data", "batch size must be positive"));
        }
        let d = self.dim();
        let too_large = |what: String| Error::OutOfMemory {
            op: "data",
            what: format!("a batch of {batch_size} samples of {d} values: {what}"),
        };
        let batch = match self {
            DataSource::Toy { dist, gen } => dist.sample_tensors(batch_size, gen),
            DataSource::Images { data, shuffler, .. } => image_batch(data, shuffler, batch_size),
        };
        batch.map_err(|e| match e {
            Error::OutOfMemory { what, .. } => too_large(what),
            other => other,
        })
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
