//! `Conv2d`: a 2-D convolution (stride 1, zero padding) over channels-last images,
//! written as a composite of existing ops so that its gradient needs no new kernel.
//!
//! im2col through `index_select`: the image `[B, H, W, C]` is flattened to
//! `[B, H·W, C]` and one zero pixel is appended (`[B, H·W + 1, C]`); a precomputed
//! index lists, for every output pixel and kernel offset, the input pixel it reads (the
//! zero pixel where the kernel hangs over the border). Selecting along the pixel dim
//! gives the patches `[B, Ho·Wo·K·K, C]`, a reshape makes them rows `[B, Ho, Wo, K·K·C]`,
//! and one matrix product with the weight gives the output `[B, Ho, Wo, out]`.
//! `index_select`'s backward scatter-adds the patch gradients back onto the pixels.

use crate::impl_module;
use crate::init::{Init, ParamBuilder};
use crate::module::Forward;
use twinflow_engine::{Device, Error, Result, Tensor};

/// A convolution with PyTorch's weight layout `[out, in, K, K]` (so checkpoints line up
/// with `nn.Conv2d`), applied to channels-last images `[B, H, W, in]`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// `[out_channels, in_channels, kernel, kernel]`.
    pub weight: Tensor,
    /// `[out_channels]`.
    pub bias: Tensor,
    padding: usize,
}

impl Conv2d {
    /// An `inputs → outputs` channel convolution with a square `kernel` and `padding`
    /// zero pixels on every side, initialised as PyTorch's `nn.Conv2d` (Kaiming-uniform
    /// weight and bias, fan-in `inputs·kernel²`).
    pub fn new(
        pb: &mut ParamBuilder,
        inputs: usize,
        outputs: usize,
        kernel: usize,
        padding: usize,
    ) -> Result<Self> {
        if inputs == 0 || outputs == 0 || kernel == 0 {
            return Err(Error::invalid(
                "conv2d",
                format!("sizes must be positive, got {inputs} → {outputs}, kernel {kernel}"),
            ));
        }
        let fan = (inputs * kernel * kernel, outputs * kernel * kernel);
        Ok(Conv2d {
            weight: pb.param(
                &[outputs, inputs, kernel, kernel],
                Init::KaimingUniform,
                fan,
            )?,
            bias: pb.param(&[outputs], Init::KaimingUniform, fan)?,
            padding,
        })
    }

    /// The kernel size K.
    pub fn kernel(&self) -> usize {
        self.weight.shape()[2]
    }

    /// Zero pixels added on every side.
    pub fn padding(&self) -> usize {
        self.padding
    }

    /// Output rows and columns for an `h × w` input.
    pub fn output_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let (k, p) = (self.kernel(), self.padding);
        if h + 2 * p < k || w + 2 * p < k {
            return Err(Error::invalid(
                "conv2d",
                format!("a {h}×{w} image with padding {p} is smaller than the {k}×{k} kernel"),
            ));
        }
        Ok((h + 2 * p - k + 1, w + 2 * p - k + 1))
    }
}

/// For each output pixel (row-major) and kernel offset (row-major), the flat input pixel
/// it reads, or `h·w` (the appended zero pixel) outside the image.
fn patch_indices(h: usize, w: usize, k: usize, pad: usize, (ho, wo): (usize, usize)) -> Vec<i64> {
    let zero_pixel = (h * w) as i64;
    let mut ids = Vec::with_capacity(ho * wo * k * k);
    for oy in 0..ho {
        for ox in 0..wo {
            for ky in 0..k {
                for kx in 0..k {
                    // Shifted by `pad` so that the subtraction cannot underflow.
                    let (y, x) = (oy + ky, ox + kx);
                    let inside = (pad..h + pad).contains(&y) && (pad..w + pad).contains(&x);
                    ids.push(match inside {
                        true => ((y - pad) * w + (x - pad)) as i64,
                        false => zero_pixel,
                    });
                }
            }
        }
    }
    ids
}

impl Forward for Conv2d {
    /// `[B, H, W, in]` → `[B, Ho, Wo, out]` with `Ho = H + 2·padding − K + 1` (likewise
    /// `Wo`).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (outputs, inputs, k) = (
            self.weight.shape()[0],
            self.weight.shape()[1],
            self.kernel(),
        );
        let (b, h, w) = match x.shape() {
            &[b, h, w, c] if c == inputs => (b, h, w),
            s => {
                return Err(Error::invalid(
                    "conv2d",
                    format!("expected an image batch [B, H, W, {inputs}], got {s:?}"),
                ))
            }
        };
        let (ho, wo) = self.output_size(h, w)?;
        let ids = patch_indices(h, w, k, self.padding, (ho, wo));
        let ids = Tensor::from_vec(ids, &[ho * wo * k * k], Device::Cpu)?.to_device(x.device())?;
        let zero = Tensor::zeros(&[b, 1, inputs], x.dtype(), x.device())?;
        let pixels = Tensor::cat(&[&x.reshape(&[b, h * w, inputs])?, &zero], 1)?;
        let patches = pixels
            .index_select(&ids, 1)?
            .reshape(&[b, ho, wo, k * k * inputs])?;
        // Patch columns run (ky, kx, channel); the weight's run (channel, ky, kx).
        let weight = self
            .weight
            .permute(&[0, 2, 3, 1])?
            .reshape(&[outputs, k * k * inputs])?;
        patches.linear(&weight, Some(&self.bias))
    }
}

impl_module! { Conv2d { weight, bias } }
