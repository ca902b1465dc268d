//! [`ImageDataset`]: labelled images in the form training uses, whatever file they came
//! from (IDX, `.npy`, a folder of PNG files).

use twinflow_engine::{Error, Result};

/// The shape of one image: channels, rows, columns (stored channel-major, `[C, H, W]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageShape {
    /// Channels: 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Rows (height).
    pub rows: usize,
    /// Columns (width).
    pub cols: usize,
}

impl ImageShape {
    /// Values per image, `channels·rows·cols`.
    pub fn dim(&self) -> usize {
        self.channels * self.rows * self.cols
    }
}

impl std::fmt::Display for ImageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{}×{}", self.channels, self.rows, self.cols)
    }
}

/// An image dataset with labels, in the form training uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDataset {
    /// Pixels in `[−1, 1]` (`byte / 127.5 − 1` for 8-bit sources), `len()·dim()`
    /// values: sample `i` is `images[i·dim() .. (i+1)·dim()]`, channel-major
    /// (`[C, H, W]`).
    pub images: Vec<f32>,
    /// One class label per sample.
    pub labels: Vec<i64>,
    /// Channels per image (1 grey, 3 RGB).
    pub channels: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// The classes' names, by label (an image folder's subfolders); empty when the
    /// source names none.
    pub class_names: Vec<String>,
}

impl ImageDataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the dataset holds no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The shape of one image.
    pub fn shape(&self) -> ImageShape {
        ImageShape {
            channels: self.channels,
            rows: self.rows,
            cols: self.cols,
        }
    }

    /// Values per sample (`channels·rows·cols`).
    pub fn dim(&self) -> usize {
        self.shape().dim()
    }

    /// Number of classes: the named classes, or the largest label plus one (0 for an
    /// empty dataset without names).
    pub fn num_classes(&self) -> usize {
        // Saturating: `check` refuses negative labels, but this may be asked first.
        let by_label = self.labels.iter().max().map_or(0, |&m| {
            usize::try_from(m).map_or(0, |m| m.saturating_add(1))
        });
        by_label.max(self.class_names.len())
    }

    /// The pixels of sample `i` (`dim()` values in `[−1, 1]`).
    pub fn image(&self, i: usize) -> &[f32] {
        &self.images[i * self.dim()..(i + 1) * self.dim()]
    }

    /// Checks what every source must give: at least one sample, as many labels as
    /// images, labels in `0..num_classes`, positive sizes. `origin` (a file) starts
    /// the error.
    pub fn check(&self, origin: &str) -> Result<()> {
        let fail = |why: String| Error::invalid("data", format!("{origin}: {why}"));
        let shape = self.shape();
        if shape.channels == 0 || shape.rows == 0 || shape.cols == 0 {
            return Err(fail(format!("image shape {shape} must be positive")));
        }
        if self.is_empty() {
            return Err(fail("no samples".into()));
        }
        if self.images.len() != self.len() * self.dim() {
            return Err(fail(format!(
                "{} labels for {} values of {shape} images",
                self.len(),
                self.images.len()
            )));
        }
        if let Some(&bad) = self.labels.iter().find(|&&l| l < 0) {
            return Err(fail(format!("class label {bad} is negative")));
        }
        let named = self.class_names.len();
        if named > 0 {
            if let Some(&bad) = self.labels.iter().find(|&&l| l as usize >= named) {
                return Err(fail(format!(
                    "class label {bad} is out of range for {named} classes"
                )));
            }
        }
        Ok(())
    }
}

/// An 8-bit pixel in `[−1, 1]`.
pub fn scale_byte(b: u8) -> f32 {
    b as f32 / 127.5 - 1.0
}
