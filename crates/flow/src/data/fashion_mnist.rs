//! Fashion-MNIST (Zalando, MIT licence): 60,000 training and 10,000 test images of
//! clothing, 28×28 grey, 10 classes, as four IDX files. Not shipped with the
//! repository: it is read from `[data] root`, else from `$FASHION_MNIST_DIR`, else from
//! where Debian's package `dataset-fashion-mnist` installs it.

use super::images::ImageDataset;
use std::path::{Path, PathBuf};
use twinflow_engine::{Error, Result};

/// The environment variable naming a directory that holds the four files.
pub const FASHION_MNIST_ENV: &str = "FASHION_MNIST_DIR";

/// Directories where system packages put the files (`dpkg -L dataset-fashion-mnist`
/// says which one on a given system).
pub const FASHION_MNIST_SYSTEM_DIRS: [&str; 3] = [
    "/usr/share/dataset-fashion-mnist",
    "/usr/share/fashion-mnist",
    "/usr/share/datasets/fashion-mnist",
];

/// The class names, by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
];

/// The two parts of the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The 60,000 training images (`train-*`).
    Train,
    /// The 10,000 test images (`t10k-*`).
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// The directory holding the files: `root` when given, else the first of
/// `$FASHION_MNIST_DIR` and [`FASHION_MNIST_SYSTEM_DIRS`] that holds them; `None` when
/// none does.
pub fn find_fashion_mnist(root: Option<&Path>) -> Option<PathBuf> {
    if let Some(root) = root {
        return Some(root.to_path_buf());
    }
    let env = std::env::var_os(FASHION_MNIST_ENV).map(PathBuf::from);
    let system = FASHION_MNIST_SYSTEM_DIRS.iter().map(PathBuf::from);
    env.into_iter()
        .chain(system)
        .find(|dir| files(dir, Split::Train).0.is_file())
}

/// The image and label files of `split` in `dir`.
fn files(dir: &Path, split: Split) -> (PathBuf, PathBuf) {
    let p = split.prefix();
    (
        dir.join(format!("{p}-images-idx3-ubyte.gz")),
        dir.join(format!("{p}-labels-idx1-ubyte.gz")),
    )
}

/// Loads `split` from [`find_fashion_mnist`]`(root)`, with the class names; a clear
/// error, saying where it looked and how to get the files, when they are missing.
pub fn load_fashion_mnist(root: Option<&Path>, split: Split) -> Result<ImageDataset> {
    let Some(dir) = find_fashion_mnist(root) else {
        return Err(Error::invalid(
            "fashion-mnist",
            format!(
                "Fashion-MNIST not found in ${FASHION_MNIST_ENV} or {}: install it \
                 (`apt-get install dataset-fashion-mnist`; `dpkg -L dataset-fashion-mnist` \
                 shows where) or copy its four files into a directory and name it with \
                 [data] root, --root or ${FASHION_MNIST_ENV}",
                FASHION_MNIST_SYSTEM_DIRS.join(", ")
            ),
        ));
    };
    let (images, labels) = files(&dir, split);
    if !images.is_file() {
        return Err(Error::invalid(
            "fashion-mnist",
            format!(
                "{} not found (a Fashion-MNIST directory holds train-* and t10k-* image \
                 and label files)",
                images.display()
            ),
        ));
    }
    let mut data = ImageDataset::load(&images, &labels)?;
    data.class_names = FASHION_MNIST_CLASSES.map(String::from).to_vec();
    data.check(&images.display().to_string())?;
    Ok(data)
}
