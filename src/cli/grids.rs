//! The sample pictures a training run leaves in `samples/`: one per NFE of the config's
//! `sample_nfe`, drawn with the run's `[sampler]` from fixed noise so that pictures of
//! different steps compare like for like.

use super::error::CliResult;
use super::plot;
use std::path::{Path, PathBuf};
use twinflow::engine::Error;
use twinflow::flow::data::ImageShape;
use twinflow::flow::eval::{sample_batched, SampleLabels, DEFAULT_SAMPLE_BATCH};
use twinflow::flow::train::{ModelKind, Trainer};

/// Samples per class in an image grid (one grid row per class).
const PER_CLASS: usize = 10;
/// Points in a 2-D scatter plot.
const SCATTER_POINTS: usize = 2000;
/// The noise seed of every grid.
const GRID_SEED: u64 = 0;

/// Writes `dir/samples/step-<N>-nfe<K>.png` for every K of `sample_nfe`, from the EMA
/// weights when the run keeps them; returns the paths written. The samples are those that
/// `twinflow sample --nfe K --n N --seed 0` (with `--ema` when the run keeps EMA weights)
/// draws from a checkpoint of this step, through the same [`sample_batched`], which
/// leaves the training's random streams as they were.
pub fn write_sample_grids(trainer: &Trainer, dir: &Path) -> CliResult<Vec<PathBuf>> {
    let cfg = trainer.config();
    let dim = trainer.data().dim();
    let classes = trainer.data().num_classes().max(1);
    let image = image_shape(trainer, dim);
    if dim != 2 && image.is_none() {
        return Ok(Vec::new());
    }
    let out = dir.join("samples");
    std::fs::create_dir_all(&out).map_err(|e| Error::io("create", &out, e))?;
    let n = if dim == 2 {
        SCATTER_POINTS
    } else {
        PER_CLASS * classes
    };
    let mut written = Vec::new();
    for &nfe in &cfg.sample_nfe {
        let sampler = cfg.sampler().at_steps(nfe);
        let (x, labels) = sample_batched(
            trainer,
            &sampler,
            &SampleLabels::Cycle { n },
            GRID_SEED,
            cfg.ema_decay > 0.0,
            DEFAULT_SAMPLE_BATCH,
            |_| {},
        )?;
        let path = out.join(format!("step-{:07}-nfe{nfe}.png", trainer.step_count()));
        plot::picture(&path, &x, &labels, dim, image, classes)?;
        written.push(path);
    }
    Ok(written)
}

/// The image shape of a sample of `dim` values, when the data are images (grey or
/// RGB).
pub fn image_shape(trainer: &Trainer, dim: usize) -> Option<ImageShape> {
    if let Some(shape) = trainer.data().image_shape() {
        if shape.dim() == dim {
            return Some(shape);
        }
    }
    let cfg = trainer.config();
    if cfg.model.kind == ModelKind::Dit {
        let d = cfg.model.dit.unwrap_or_default();
        let shape = ImageShape {
            channels: d.channels,
            rows: d.image_size,
            cols: d.image_size,
        };
        if matches!(d.channels, 1 | 3) && shape.dim() == dim {
            return Some(shape);
        }
    }
    None
}
