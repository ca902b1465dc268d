//! The evaluation classifier of image samples: the held-out split of each dataset, shift
//! augmentation, the training loop, batched inference (predictions and features) and
//! the classifier's checkpoint file. See `docs/evaluation.md`.
//!
//! The model itself is [`twinflow_nn::Classifier`] (a small CNN); the evaluation of
//! generated samples that uses it lives in [`crate::eval`].

mod augment;
mod file;
mod inference;
mod split;
mod training;

pub use augment::random_shifts;
pub use file::{load_classifier, save_classifier, ClassifierFile};
pub use inference::{accuracy, features, predict};
pub use split::{
    dataset_identity, eval_split, held_out_split, split_images, EvalSplit, MNIST_HELD_OUT,
    USER_HELD_OUT_FRACTION,
};
pub use training::{train_classifier, ClassifierTraining, EpochRecord, TrainEvent};
