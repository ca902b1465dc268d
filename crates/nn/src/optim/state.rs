//! What an optimizer saves to a checkpoint, and the checks every optimizer runs when
//! loading it back.

use super::Slot;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use twinflow_engine::{DType, Error, Result, Tensor};

/// An optimizer's saved state.
#[derive(Debug, Clone)]
pub struct OptimizerState {
    /// Buffers named `{parameter name}.{buffer}`, e.g. `fc.weight.exp_avg`.
    pub tensors: Vec<(String, Tensor)>,
    /// Hyper-parameters and step counts.
    pub record: OptimizerRecord,
}

/// The JSON-able part of an optimizer's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerRecord {
    /// Which optimizer wrote it (`"sgd"`, `"adam"`, `"adamw"`); loading into another
    /// kind is refused.
    pub kind: String,
    /// The optimizer's configuration (learning rate included).
    pub hyper: serde_json::Value,
    /// Updates applied so far to each parameter, by name (parameters never updated are
    /// absent).
    pub steps: BTreeMap<String, u64>,
}

/// The `{param}.{buffer}` state tensors grouped by slot index and buffer, with every
/// name that matches no parameter and buffer added to `problems`.
pub(crate) fn group_state<'a, S>(
    slots: &[Slot<S>],
    buffers: &[&'a str],
    tensors: &[(String, Tensor)],
    problems: &mut Vec<String>,
) -> BTreeMap<usize, BTreeMap<&'a str, Tensor>> {
    let index: BTreeMap<&str, usize> = slots
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut groups: BTreeMap<usize, BTreeMap<&'a str, Tensor>> = BTreeMap::new();
    for (name, t) in tensors {
        let owner = buffers.iter().find_map(|&b| {
            let param = name.strip_suffix(b)?.strip_suffix('.')?;
            index.get(param).map(|&i| (i, b))
        });
        match owner {
            Some((i, b)) => {
                groups.entry(i).or_default().insert(b, t.clone());
            }
            None => problems.push(format!(
                "unexpected tensor `{name}` (no parameter with a buffer of that name)"
            )),
        }
    }
    groups
}

/// Checks a saved buffer against the shape and dtype it must have, adding any mismatch
/// to `problems`; returns a fresh copy on the parameter's device when it fits.
pub(crate) fn restored_buffer(
    name: &str,
    saved: &Tensor,
    like: &Tensor,
    dtype: DType,
    problems: &mut Vec<String>,
) -> Result<Option<Tensor>> {
    if saved.shape() != like.shape() {
        problems.push(format!(
            "`{name}` has shape {:?}, the parameter needs {:?}",
            saved.shape(),
            like.shape()
        ));
        return Ok(None);
    }
    if saved.dtype() != dtype {
        problems.push(format!(
            "`{name}` has dtype {}, expected {dtype}",
            saved.dtype()
        ));
        return Ok(None);
    }
    let copy = Tensor::zeros(like.shape(), dtype, like.device())?;
    copy.assign(&saved.to_device(like.device())?)?;
    Ok(Some(copy))
}

/// One error listing every problem found while loading a state, or `Ok` when none.
pub(crate) fn report(op: &'static str, problems: Vec<String>) -> Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::invalid(
        op,
        format!("the saved state does not fit: {}", problems.join("; ")),
    ))
}

/// Decodes a record's hyper-parameters, refusing a record of another optimizer kind.
pub(crate) fn hyper_from<T: serde::de::DeserializeOwned>(
    op: &'static str,
    kinds: &[&str],
    record: &OptimizerRecord,
) -> Result<T> {
    if !kinds.contains(&record.kind.as_str()) {
        return Err(Error::invalid(
            op,
            format!(
                "the saved state is from a `{}` optimizer, not {}",
                record.kind,
                kinds.join("/")
            ),
        ));
    }
    serde_json::from_value(record.hyper.clone())
        .map_err(|e| Error::invalid(op, format!("unreadable hyper-parameters: {e}")))
}
