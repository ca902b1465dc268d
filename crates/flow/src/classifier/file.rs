//! The classifier's checkpoint file: a safetensors checkpoint (written atomically) whose
//! config metadata holds the model's sizes, so it can be rebuilt without other input.

use super::split::dataset_identity;
use super::training::{ClassifierTraining, EpochRecord};
use crate::data::DataConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;
use twinflow_engine::{Error, Result};
use twinflow_nn::{Checkpoint, Classifier, Module, ParamBuilder};

/// The config metadata of a classifier checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierFile {
    /// How it was trained (the model's sizes included).
    pub training: ClassifierTraining,
    /// Its epochs, the last one's held-out accuracy being the model's.
    pub epochs: Vec<EpochRecord>,
    /// Which images it was measured on (e.g. "the last 1000 of data/mnist-10k").
    pub held_out: String,
    /// The dataset it was trained on ([`dataset_identity`]); files written before
    /// classifiers existed for other datasets hold none and are MNIST-10k's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
}

impl ClassifierFile {
    /// The dataset it was trained on ([`dataset_identity`]).
    pub fn dataset(&self) -> &str {
        self.dataset.as_deref().unwrap_or("mnist")
    }

    /// An error, saying how to train the right one, unless it was trained on the
    /// dataset `data` describes.
    pub fn check_fits(&self, data: &DataConfig) -> Result<()> {
        let wanted = dataset_identity(data);
        if self.dataset() == wanted {
            return Ok(());
        }
        Err(Error::invalid(
            "eval",
            format!(
                "the classifier was trained on {}, the run on {wanted}; train one for the \
                 run's data with `twinflow train-classifier --dataset {}{}`",
                self.dataset(),
                data.dataset,
                data.path
                    .as_ref()
                    .map(|p| format!(" --path {}", p.display()))
                    .unwrap_or_default()
            ),
        ))
    }
}

/// Writes `model` and `meta` to `path` (atomically: a complete file or none), creating
/// the parent directory. The step recorded is the number of epochs.
pub fn save_classifier(
    path: impl AsRef<Path>,
    model: &Classifier,
    meta: &ClassifierFile,
) -> Result<()> {
    let path = path.as_ref();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::invalid(
                "save_classifier",
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
    }
    let config = serde_json::to_value(meta)
        .map_err(|e| Error::invalid("save_classifier", format!("cannot encode the config: {e}")))?;
    Checkpoint::new(meta.epochs.len() as u64, model)
        .with_config(config)
        .save(path)?;
    Ok(())
}

/// Reads a classifier written by [`save_classifier`]: rebuilds it from the saved sizes
/// and restores its weights. Returns it in eval mode, with the metadata.
pub fn load_classifier(path: impl AsRef<Path>) -> Result<(Classifier, ClassifierFile)> {
    let path = path.as_ref();
    let ck = Checkpoint::load(path)?;
    let not_classifier = |why: String| {
        Error::invalid(
            "load_classifier",
            format!("{} is not a classifier checkpoint: {why}", path.display()),
        )
    };
    let config = ck
        .config
        .clone()
        .ok_or_else(|| not_classifier("it holds no config".into()))?;
    let meta: ClassifierFile =
        serde_json::from_value(config).map_err(|e| not_classifier(e.to_string()))?;
    // The sizes in the file are checked against its tensors before a network is built
    // from them.
    let held = ck.model_parameter_count();
    if meta.training.model.parameter_count() != Some(held) {
        return Err(not_classifier(format!(
            "its config declares a network of sizes {:?}, which does not have the {held} \
             parameter values the file holds",
            meta.training.model
        )));
    }
    let mut model = Classifier::new(&mut ParamBuilder::new(0), &meta.training.model)?;
    ck.restore_model(&mut model)?;
    model.set_training(false);
    Ok((model, meta))
}
