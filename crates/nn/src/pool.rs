//! Max pooling of channels-last images, as a composite of `reshape` and `max`.

use twinflow_engine::{Error, Result, Tensor};

/// 2×2 max pooling with stride 2 of channels-last images: `[B, H, W, C]` →
/// `[B, H/2, W/2, C]` (H and W even), as a reshape to `[B, H/2, 2, W/2, 2, C]` and a
/// max over the two window dims. The gradient goes to the window's maximum (shared
/// equally among ties, as `max` does).
pub fn max_pool_2x2(x: &Tensor) -> Result<Tensor> {
    match x.shape() {
        &[b, h, w, c] if h % 2 == 0 && w % 2 == 0 => {
            x.reshape(&[b, h / 2, 2, w / 2, 2, c])?.max(&[2, 4], false)
        }
        s => Err(Error::invalid(
            "max_pool_2x2",
            format!("expected [B, H, W, C] with even H and W, got {s:?}"),
        )),
    }
}
