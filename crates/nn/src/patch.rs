//! Cutting flat images into patch tokens and back.
//!
//! Layout convention (DiT's): an image is stored flat as `[B, C·H·W]`, i.e. `[B, C, H,
//! W]` row-major. Tokens run over the `g × g` grid of patches row by row (`g = H/p`,
//! square images), and inside a token the `C·p·p` values are channel-major: all of
//! channel 0's `p × p` pixels (row-major), then channel 1's, and so on — the order of a
//! flattened `Conv2d(C, D, p, stride=p)` weight. For `C = 1` this is exactly the
//! reference's `x.view(B,g,p,g,p).permute(0,1,3,2,4).reshape(B,g*g,p*p)`.

use twinflow_engine::{Error, Result, Tensor};

/// The patch geometry of square `channels × size × size` images cut into `patch × patch`
/// patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchGrid {
    channels: usize,
    size: usize,
    patch: usize,
}

impl PatchGrid {
    /// The grid of `size × size` images with `channels` channels; `patch` must divide
    /// `size` and all three must be positive.
    pub fn new(channels: usize, size: usize, patch: usize) -> Result<Self> {
        if channels == 0 || patch == 0 || size == 0 || !size.is_multiple_of(patch) {
            return Err(Error::invalid(
                "patch_grid",
                format!(
                    "needs positive sizes with the patch dividing the image: \
                     channels {channels}, image {size}, patch {patch}"
                ),
            ));
        }
        Ok(PatchGrid {
            channels,
            size,
            patch,
        })
    }

    /// Patches per side, `g = size / patch`.
    pub fn side(&self) -> usize {
        self.size / self.patch
    }

    /// Number of tokens, `g²`.
    pub fn tokens(&self) -> usize {
        self.side() * self.side()
    }

    /// Values per token, `C·p·p`.
    pub fn token_dim(&self) -> usize {
        self.channels * self.patch * self.patch
    }

    /// Values per image, `C·H·W`.
    pub fn image_dim(&self) -> usize {
        self.channels * self.size * self.size
    }

    /// Flat images `[B, C·H·W]` → tokens `[B, g², C·p·p]` (one copy).
    pub fn patchify(&self, x: &Tensor) -> Result<Tensor> {
        let b = match x.shape() {
            &[b, n] if n == self.image_dim() => b,
            _ => return Err(self.shape_error(x, "patchify", "[B, C·H·W]")),
        };
        let (c, g, p) = (self.channels, self.side(), self.patch);
        // [B, C, g, p, g, p] → [B, g(row), g(col), C, p, p]
        x.reshape(&[b, c, g, p, g, p])?
            .permute(&[0, 2, 4, 1, 3, 5])?
            .reshape(&[b, self.tokens(), self.token_dim()])
    }

    /// Tokens `[B, g², C·p·p]` → flat images `[B, C·H·W]`, the inverse of
    /// [`PatchGrid::patchify`] (one copy).
    pub fn unpatchify(&self, x: &Tensor) -> Result<Tensor> {
        let b = match x.shape() {
            &[b, t, k] if t == self.tokens() && k == self.token_dim() => b,
            _ => return Err(self.shape_error(x, "unpatchify", "[B, g², C·p·p]")),
        };
        let (c, g, p) = (self.channels, self.side(), self.patch);
        // [B, g(row), g(col), C, p, p] → [B, C, g, p, g, p]
        x.reshape(&[b, g, g, c, p, p])?
            .permute(&[0, 3, 1, 4, 2, 5])?
            .reshape(&[b, self.image_dim()])
    }

    /// A shape error naming the expected layout and the geometry.
    fn shape_error(&self, x: &Tensor, op: &'static str, expected: &str) -> Error {
        Error::invalid(
            op,
            format!(
                "expects {expected} for {} channel(s) of {}×{} in {}×{} patches, got {:?}",
                self.channels,
                self.size,
                self.size,
                self.patch,
                self.patch,
                x.shape()
            ),
        )
    }
}
