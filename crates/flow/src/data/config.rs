//! The `[data]` table of a training config: which dataset, where its files are, and
//! the batch size.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use twinflow_engine::{Error, Result};

/// The training data.
///
/// ```toml
/// [data]
/// dataset = "image-folder"   # a name of DATASET_NAMES
/// path = "my-images"         # idx / npy: the image file; image-folder: the folder
/// labels = "labels.npy"      # idx / npy only
/// batch_size = 128
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A name of [`DATASET_NAMES`](super::DATASET_NAMES).
    pub dataset: String,
    /// Samples per step.
    pub batch_size: usize,
    /// The directory holding `data/` (for `"mnist"`) or the Fashion-MNIST files (for
    /// `"fashion-mnist"`); the current directory (for `"mnist"`) or the usual places
    /// (for `"fashion-mnist"`) by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// The data file (`"idx"`: the IDX image file; `"npy"`: the array) or folder
    /// (`"image-folder"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The labels file (`"idx"`: an IDX label file; `"npy"`: an int64 array `[N]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<PathBuf>,
}

/// Which keys each file-based dataset needs.
fn needs(dataset: &str) -> (bool, bool) {
    match dataset {
        "idx" | "npy" => (true, true),
        "image-folder" => (true, false),
        _ => (false, false),
    }
}

impl DataConfig {
    /// A config for `dataset` with files at `path` and `labels` (where it takes them).
    pub fn named(dataset: &str, batch_size: usize) -> DataConfig {
        DataConfig {
            dataset: dataset.to_string(),
            batch_size,
            root: None,
            path: None,
            labels: None,
        }
    }

    /// Errors for a zero batch size, or a missing or superfluous `path`/`labels` for
    /// the dataset.
    pub fn validate(&self) -> Result<()> {
        let fail = |why: String| Error::invalid("config", why);
        if self.batch_size == 0 {
            return Err(fail("data.batch_size must be positive".into()));
        }
        let (wants_path, wants_labels) = needs(&self.dataset);
        let name = &self.dataset;
        for (key, given, wanted) in [
            ("path", self.path.is_some(), wants_path),
            ("labels", self.labels.is_some(), wants_labels),
        ] {
            if wanted && !given {
                return Err(self.missing(key));
            }
            if given && !wanted {
                return Err(fail(format!(
                    "data.{key} is given but data.dataset = \"{name}\" takes no {key}"
                )));
            }
        }
        Ok(())
    }

    /// `path`, which [`DataConfig::validate`] has checked is given where needed.
    pub(super) fn path(&self) -> Result<&Path> {
        self.path.as_deref().ok_or_else(|| self.missing("path"))
    }

    /// `labels`, likewise.
    pub(super) fn labels(&self) -> Result<&Path> {
        self.labels.as_deref().ok_or_else(|| self.missing("labels"))
    }

    /// The error for a dataset that needs `key` and lacks it.
    fn missing(&self, key: &str) -> Error {
        Error::invalid(
            "config",
            format!(
                "data.dataset = \"{}\" needs data.{key} (for `twinflow data`: --{key})",
                self.dataset
            ),
        )
    }
}
