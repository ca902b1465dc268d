//! Class-label embedding with a null class and label dropout, for classifier-free
//! guidance: the table has `classes + 1` rows, the last being the "no label" entry.

use crate::dropout::check_probability;
use crate::embedding::Embedding;
use crate::impl_module;
use crate::init::{ForwardRng, Init, ParamBuilder};
use crate::module::Forward;
use twinflow_engine::{DType, Error, Result, Tensor};

/// A `[classes + 1, dim]` table (parameter name `weight`). In train mode each label is
/// replaced by the null label with probability `dropout`, drawn from the model's
/// [`ForwardRng`]; in eval mode labels pass unchanged. Built in train mode, like PyTorch.
#[derive(Debug, Clone)]
pub struct LabelEmbedding {
    /// The table, whose last row is the null class.
    pub table: Embedding,
    num_classes: usize,
    dropout: f64,
    training: bool,
    rng: ForwardRng,
}

impl LabelEmbedding {
    /// An embedding of `num_classes` classes plus the null class into `dim`, the table
    /// filled by `init`; labels are dropped with probability `dropout ∈ [0, 1)`.
    pub fn new(
        pb: &mut ParamBuilder,
        num_classes: usize,
        dim: usize,
        dropout: f64,
        init: Init,
    ) -> Result<Self> {
        check_probability("label_embedding", dropout)?;
        Ok(LabelEmbedding {
            table: Embedding::new(pb, num_classes + 1, dim, init)?,
            num_classes,
            dropout,
            training: true,
            rng: pb.forward_rng.clone(),
        })
    }

    /// The index of the null ("unconditional") class: the number of classes.
    pub fn null_label(&self) -> i64 {
        self.num_classes as i64
    }

    /// The labels with each replaced by the null label with probability `dropout`.
    /// Draws one uniform number per label whatever the labels are, so that the stream
    /// advances the same way in every forward of the same batch size.
    fn drop_labels(&self, labels: &Tensor) -> Result<Tensor> {
        let n = labels.elem_count();
        let u = self
            .rng
            .uniform(
                "label_embedding",
                &[n],
                (0.0, 1.0),
                DType::F64,
                labels.device(),
            )?
            .to_vec_f64()?;
        let null = self.null_label();
        let dropped: Vec<i64> = labels
            .to_vec::<i64>()?
            .into_iter()
            .zip(u)
            .map(|(y, u)| if u < self.dropout { null } else { y })
            .collect();
        Tensor::from_vec(dropped, labels.shape(), labels.device())
    }
}

impl Forward for LabelEmbedding {
    /// i64 labels `[B]`, each in `0..=classes` (`classes` is the null class) →
    /// `[B, dim]`.
    fn forward(&self, labels: &Tensor) -> Result<Tensor> {
        if labels.dtype() != DType::I64 || labels.rank() != 1 {
            return Err(Error::invalid(
                "label_embedding",
                format!(
                    "expects i64 labels of shape [B], got {} {:?}",
                    labels.dtype(),
                    labels.shape()
                ),
            ));
        }
        match self.training && self.dropout > 0.0 {
            true => self.table.forward(&self.drop_labels(labels)?),
            false => self.table.forward(labels),
        }
    }
}

// The reference's label embedding is a plain `nn.Embedding`: the table's `weight` is
// this module's own (`yemb.weight`, not `yemb.table.weight`).
impl_module! { LabelEmbedding { table as "" } training_flag: training }
